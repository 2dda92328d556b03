"""Datapath benchmark: the same client and server pods, five ways between them.

Builds a test node (network namespaces and cgroups, no uplink; see
integration/datapath/node.py) and measures, in one run, with `hey` inside the
client pod:

  direct        client -> server pod IP
  iptables DNAT client -> VIP, DNAT in the node namespace's PREROUTING (kube-proxy style)
  nodemesh      client -> VIP, translated at connect() by the cgroup hooks
  node Envoy    client -> VIP, steered by the hooks to the node Envoy (HTTP proxy)
  sidecars      client -> VIP, iptables REDIRECT to a client-side Envoy, which
                connects to the server pod, where iptables REDIRECT hands it to
                a server-side Envoy in front of the app (Istio's model)

for each: p50/p99 at a fixed rate (keep-alive off and on) and the maximum
new-connection rate (keep-alive off, no rate limit). Then memory: RSS of the
node Envoy plus the agent, against N sidecar Envoys.

The app is an Envoy answering every request itself (direct_response), so the
server side costs the same on every path. Run as root:

    .venv/bin/python bench/datapath.py [--seconds 5] [--rate 1000]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "integration"))
sys.path.insert(0, str(REPO))

from datapath.node import NODE_IP, MeshNode, sysctl_in  # noqa: E402
from datapath.plans import frontend, plan, redirect  # noqa: E402

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb  # noqa: E402
from nodemesh.ebpf import applier, loader  # noqa: E402
from nodemesh.ebpf.endpoints import DirectoryPodCgroups  # noqa: E402
from nodemesh.node_envoy import find_envoy_binary  # noqa: E402

VIP_KERNEL, VIP_DNAT, VIP_SIDECAR = "10.96.0.10", "10.96.1.10", "10.96.2.10"
APP_PORT, NODE_PROXY_PORT, OUT_PORT, IN_PORT = 8080, 15001, 15001, 15006
# One app port per path: with keep-alive off, each path leaves thousands of
# TIME_WAIT sockets, and paths sharing a destination port would share (and
# exhaust) one ephemeral-port space, slowing whichever path runs next.
PORT_DIRECT, PORT_DNAT, PORT_KERNEL, PORT_NODE_ENVOY = 8080, 8081, 8082, 8083
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _hcm(name: str, route: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": name,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, **route}],
                    }
                ]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
        },
    }


def _listener(name: str, port: int, route: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filters": [_hcm(name, route)]}],
    }


def _cluster(name: str, ip: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": ip, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


def app_config() -> dict[str, Any]:
    ok = {"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
    ports = (PORT_DIRECT, PORT_DNAT, PORT_KERNEL, PORT_NODE_ENVOY)
    return {"static_resources": {"listeners": [_listener(f"app{p}", p, ok) for p in ports]}}


def proxy_config(hops: list[tuple[str, int, str, int]]) -> dict[str, Any]:
    """One HTTP listener per hop: (name, listen port, upstream ip, upstream port)."""
    return {
        "static_resources": {
            "listeners": [_listener(n, port, {"route": {"cluster": n}}) for n, port, _, _ in hops],
            "clusters": [_cluster(n, ip, up) for n, _, ip, up in hops],
        }
    }


class Bench:
    def __init__(self, node: MeshNode, work: Path) -> None:
        self.node, self.work = node, work
        self.envoy = find_envoy_binary()
        self.client = node.add_pod("bench", "client")
        self.server = node.add_pod("bench", "server")
        self.server2 = node.add_pod("bench", "server2")

    def start_envoy(
        self, name: str, config: dict[str, Any], cgroup: Path, ns: str
    ) -> subprocess.Popen[str]:
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [
            self.envoy,
            "-c",
            str(path),
            "--disable-hot-restart",
            "--concurrency",
            "2",
            "-l",
            "error",
        ]
        return self.node.spawn(
            argv, cgroup, ns, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def iptables(self, ns: str, *rule: str) -> None:
        cmd = [
            sys.executable,
            str(REPO / "integration/datapath/launcher.py"),
            "",
            ns,
            "--",
            "iptables",
            *rule,
        ]
        subprocess.run(cmd, check=True, timeout=60)

    def setup(self) -> None:
        n = self.node
        for ns in (self.client.netns, n.netns):
            sysctl_in(ns, "net.ipv4.ip_local_port_range", "1024 65535")
        for pod in (self.server, self.server2):
            self.start_envoy(f"app-{pod.name}", app_config(), pod.cgroup, pod.netns)
        # Kernel path and node Envoy path share one datapath.
        loader.load(n.config())
        fe = frontend(VIP_KERNEL, 80, pb.TCP, [(self.server.ip, PORT_KERNEL)])
        fe_node = frontend(
            "10.96.0.11", 80, pb.TCP, [(self.server.ip, PORT_KERNEL)], service="bench/viaenvoy"
        )
        steer = redirect(fe_node, NODE_PROXY_PORT, clients=["bench/client"])
        applier.apply(
            plan(fe, fe_node, redirects=(steer,)),
            n.config().maps_dir,
            NODE_IP,
            DirectoryPodCgroups(n.mesh),
        )
        node_proxy = proxy_config([("node", NODE_PROXY_PORT, self.server.ip, PORT_NODE_ENVOY)])
        self.node_envoy = self.start_envoy("node-envoy", node_proxy, n.proxy_cgroup, n.netns)
        # kube-proxy style: DNAT where pod traffic enters the node.
        self.iptables(
            n.netns,
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            VIP_DNAT,
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            f"{self.server.ip}:{PORT_DNAT}",
        )
        # Sidecars: the client's outbound and the server's inbound, both REDIRECTed.
        out = proxy_config([("outbound", OUT_PORT, self.server2.ip, APP_PORT)])
        self.start_envoy("sidecar-client", out, n.outside, self.client.netns)
        self.iptables(
            self.client.netns,
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            VIP_SIDECAR,
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "REDIRECT",
            "--to-ports",
            str(OUT_PORT),
        )
        inbound = proxy_config([("inbound", IN_PORT, "127.0.0.1", APP_PORT)])
        self.start_envoy("sidecar-server", inbound, n.outside, self.server2.netns)
        self.iptables(
            self.server2.netns,
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            str(APP_PORT),
            "-j",
            "REDIRECT",
            "--to-ports",
            str(IN_PORT),
        )

    def paths(self) -> dict[str, str]:
        return {
            "direct pod IP": f"http://{self.server.ip}:{PORT_DIRECT}/",
            "iptables DNAT": f"http://{VIP_DNAT}/",
            "nodemesh kernel": f"http://{VIP_KERNEL}/",
            "node Envoy": "http://10.96.0.11/",
            "sidecars": f"http://{VIP_SIDECAR}/",
        }

    def hey(self, url: str, *args: str) -> dict[str, float]:
        argv = ["hey", *args, url]
        proc = self.node.spawn(argv, self.client.cgroup, self.client.netns)
        out, _ = proc.communicate(timeout=600)
        return parse_hey(out)

    def wait_ready(self) -> None:
        for name, url in self.paths().items():
            for _ in range(300):
                if self.hey(url, "-n", "5", "-c", "1").get("ok", 0) == 5:
                    break
                time.sleep(0.1)
            else:
                raise SystemExit(f"path {name} never answered")


def parse_hey(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m[1])
    for pct in ("50", "99"):
        m = re.search(rf"{pct}% in ([\d.]+) secs", text)
        if m:
            out[f"p{pct}"] = float(m[1]) * 1000
    m = re.search(r"\[200\]\s+(\d+) responses", text)
    out["ok"] = float(m[1]) if m else 0.0
    errors = re.search(r"Error distribution:\n((?:\s+\[\d+\].*\n?)+)", text)
    out["errors"] = (
        float(sum(int(x) for x in re.findall(r"\[(\d+)\]", errors[1]))) if errors else 0.0
    )
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def map_memlock(pin_dir: Path) -> int:
    total = 0
    for pin in (pin_dir / "maps").iterdir():
        info = json.loads(
            subprocess.run(
                ["bpftool", "-j", "map", "show", "pinned", str(pin)],
                capture_output=True,
                check=True,
            ).stdout
        )
        total += int(info.get("bytes_memlock", 0))
    return total


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def latency_table(bench: Bench, seconds: int, rate: int, rounds: int) -> list[str]:
    """Each round runs every path once, in a rotated order, so background load
    on the shared machine hits every path alike; the table shows medians."""
    workers = 10
    per_worker = str(rate // workers)
    paths = list(bench.paths().items())
    cells: dict[str, dict[str, list[float]]] = {name: {} for name, _ in paths}
    for r in range(rounds):
        for name, url in paths[r % len(paths) :] + paths[: r % len(paths)]:
            dur = f"{seconds}s"
            off = bench.hey(
                url, "-z", dur, "-c", str(workers), "-q", per_worker, "-disable-keepalive"
            )
            on = bench.hey(url, "-z", dur, "-c", str(workers), "-q", per_worker)
            peak = bench.hey(url, "-z", dur, "-c", "50", "-disable-keepalive")
            got = {
                "off50": off.get("p50", 0),
                "off99": off.get("p99", 0),
                "on50": on.get("p50", 0),
                "on99": on.get("p99", 0),
                "max": peak.get("rps", 0),
                "errors": off["errors"] + on["errors"] + peak["errors"],
            }
            for key, value in got.items():
                cells[name].setdefault(key, []).append(value)
    rows = [
        f"{'path':<18}{'p50 ka-off':>12}{'p99 ka-off':>12}{'p50 ka-on':>11}{'p99 ka-on':>11}"
        f"{'max new conn/s':>16}{'errors':>8}"
    ]
    for name, _ in paths:
        m = {k: _median(v) for k, v in cells[name].items()}
        errs = int(sum(cells[name]["errors"]))
        rows.append(
            f"{name:<18}{m['off50']:>10.2f}ms{m['off99']:>10.2f}ms"
            f"{m['on50']:>9.2f}ms{m['on99']:>9.2f}ms{m['max']:>16.0f}{errs:>8}"
        )
    return rows


def connect_table(bench: Bench, rounds: int, count: int = 2000) -> list[str]:
    """The cost of the translation itself: connect() to each path's address,
    no HTTP, interleaved per round; medians of the per-round p50/p99."""
    paths = {
        "direct pod IP": (bench.server.ip, PORT_DIRECT),
        "iptables DNAT": (VIP_DNAT, 80),
        "nodemesh kernel": (VIP_KERNEL, 80),
    }
    got: dict[str, dict[str, list[float]]] = {name: {"p50": [], "p99": []} for name in paths}
    for _ in range(rounds):
        for name, (host, port) in paths.items():
            proc = bench.node.probe(bench.client, "connect-bench", host, str(port), str(count))
            out, _ = proc.communicate(timeout=600)
            stats = json.loads(out)
            for key in ("p50", "p99"):
                got[name][key].append(stats[key])
    rows = [f"{'path':<18}{'connect p50':>13}{'connect p99':>13}"]
    for name in paths:
        p50, p99 = _median(got[name]["p50"]), _median(got[name]["p99"])
        rows.append(f"{name:<18}{p50:>11.1f}µs{p99:>11.1f}µs")
    return rows


def memory_table(bench: Bench, counts: list[int]) -> list[str]:
    n = bench.node
    agent = n.spawn(
        [
            sys.executable,
            "-m",
            "nodemesh.cli",
            "agent",
            f"--pin-dir={n.pin_dir}",
            f"--cgroup={n.mesh}",
            f"--proxy-cgroup={n.proxy_cgroup}",
            "--watch",
        ],
        n.outside,
        n.netns,
        stdout=subprocess.PIPE,
    )
    assert agent.stdout is not None
    while "agent ready" not in agent.stdout.readline():
        pass
    envoy_kib, agent_kib = rss_kib(bench.node_envoy.pid), rss_kib(agent.pid)
    node_side = envoy_kib + agent_kib
    maps = map_memlock(n.pin_dir) // 1024
    rows = [
        f"node side: Envoy {envoy_kib / 1024:.1f} MiB + agent {agent_kib / 1024:.1f} MiB",
        f"{'N pods':>7}{'node Envoy+agent':>18}{'N sidecar Envoys':>18}{'ratio':>8}",
    ]
    running: list[subprocess.Popen[str]] = []
    for count in counts:
        while len(running) < count:
            i = len(running)
            cfg = proxy_config(
                [
                    ("outbound", 30000 + 2 * i, bench.server2.ip, APP_PORT),
                    ("inbound", 30001 + 2 * i, "127.0.0.1", APP_PORT),
                ]
            )
            running.append(bench.start_envoy(f"sidecar-{i}", cfg, n.outside, n.netns))
        time.sleep(3)  # let the last ones finish booting before sampling RSS
        sidecars = sum(rss_kib(p.pid) for p in running)
        rows.append(
            f"{count:>7}{node_side / 1024:>16.1f}Mi{sidecars / 1024:>16.1f}Mi"
            f"{node_side / sidecars:>8.3f}"
        )
    rows.append(
        f"(kernel side, not in RSS: the pinned nm_* maps account {maps / 1024:.1f} MiB memlock)"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--sidecars", default="10,25,50")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nm-bench-") as tmp:
        node = MeshNode(Path(tmp))
        try:
            node.setup()
            bench = Bench(node, Path(tmp))
            bench.setup()
            bench.wait_ready()
            print(
                f"HTTP GET, {args.rate} req/s for {args.seconds}s per cell (10 workers); "
                f"max: 50 workers, keep-alive off; median of {args.rounds} rounds"
            )
            print("\n".join(latency_table(bench, args.seconds, args.rate, args.rounds)))
            print()
            print(f"TCP connect() only, {args.rounds} rounds of 2000 each, interleaved")
            print("\n".join(connect_table(bench, args.rounds)))
            print()
            print("memory (RSS)")
            print("\n".join(memory_table(bench, [int(c) for c in args.sidecars.split(",")])))
        finally:
            try:
                loader.cleanup(node.config())
            finally:
                node.teardown()


if __name__ == "__main__":
    main()
