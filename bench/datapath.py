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
server side costs the same on every path.

Noise control (the machine has 2 cores, shared with other work): hey runs on
one fixed CPU set and every Envoy (app, node, sidecars) on another, each Envoy
with the same --concurrency; each path gets a discarded warm-up cell; rounds
interleave the paths cell by cell in a rotated order; the report gives the
median and [min-max] of the per-round values, the per-round paired ratios
behind each target and in how many rounds each target was met, and the CPU
that other work took during the cells. The run waits for the 1-minute load to
drop to --max-load and refuses to start above it (--force to run anyway).
Run as root:

    .venv/bin/python bench/datapath.py [--seconds 5] [--rate 1000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "integration"))
sys.path.insert(0, str(REPO))

from datapath.node import CGROUP2, NODE_IP, PROBE, MeshNode, sysctl_in  # noqa: E402
from datapath.plans import frontend, plan, redirect  # noqa: E402
from datapath_envoy import app_config, proxy_config  # noqa: E402
from datapath_measure import (  # noqa: E402
    CONTROLS,
    LATENCY_CELLS,
    TARGETS,
    Cells,
    ForeignCpu,
    bpf_stats,
    hook_counters,
    hook_delta,
    loadavg,
    map_memlock,
    parse_hey,
    rss_kib,
    wait_for_quiet,
)

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
# A second direct path (A/A control): how far two identical paths differ is
# the noise floor every ratio below has to be read against.
PORT_AGAIN = 8084
APP_PORTS = (PORT_DIRECT, PORT_DNAT, PORT_KERNEL, PORT_NODE_ENVOY, PORT_AGAIN)


@dataclass(frozen=True)
class Placement:
    """Where processes run: the same for every path, never tuned per path."""

    hey_cpus: str
    envoy_cpus: str
    envoy_concurrency: int
    nice: int

    def wrap(self, cpus: str, argv: list[str]) -> list[str]:
        """argv pinned to `cpus` at the benchmark's niceness (which makes
        other work on the shared cores yield to every path alike)."""
        return ["nice", "-n", str(self.nice), "taskset", "-c", cpus, *argv]


class Bench:
    def __init__(self, node: MeshNode, work: Path, placement: Placement) -> None:
        self.node, self.work, self.placement = node, work, placement
        self.foreign = ForeignCpu(CGROUP2, node.cgroup_root)
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
            str(self.placement.envoy_concurrency),
            "-l",
            "error",
        ]
        argv = self.placement.wrap(self.placement.envoy_cpus, argv)
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
        # The max-rate cells close ~30,000 connections each. At the default
        # 120 s, their conntrack entries filled a namespace's table within a
        # few cells (nf_conntrack_max counts per namespace) and new connections
        # of every path stalled to ~100/s. Closed connections leave conntrack
        # at once in this node's namespaces, and only in them.
        for ns in (self.client.netns, n.netns, self.server.netns, self.server2.netns):
            sysctl_in(ns, "net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")
        for pod in (self.server, self.server2):
            self.start_envoy(f"app-{pod.name}", app_config(APP_PORTS), pod.cgroup, pod.netns)
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
            "direct again": f"http://{self.server.ip}:{PORT_AGAIN}/",
        }

    def hey(self, url: str, *args: str) -> dict[str, float]:
        argv = self.placement.wrap(self.placement.hey_cpus, ["hey", *args, url])
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


def _run_cell(bench: Bench, cell: str, url: str, seconds: int, rate: int) -> dict[str, float]:
    workers, dur = 10, f"{seconds}s"
    fixed = ("-z", dur, "-c", str(workers), "-q", str(rate // workers))
    with bench.foreign.window():
        if cell == "off":
            return bench.hey(url, *fixed, "-disable-keepalive")
        if cell == "on":
            return bench.hey(url, *fixed)
        return bench.hey(url, "-z", dur, "-c", "50", "-disable-keepalive")


def _record(cells: dict[str, Cells], name: str, cell: str, got: dict[str, float]) -> None:
    if cell == "peak":
        cells["max"].add(name, got.get("rps", 0))
        return
    ka = "ka-off" if cell == "off" else "ka-on"
    cells[f"p50 {ka}"].add(name, got.get("p50", 0))
    cells[f"p99 {ka}"].add(name, got.get("p99", 0))


def latency_table(bench: Bench, seconds: int, rate: int, rounds: int, warmup: int) -> list[str]:
    """Each round runs every latency cell for every path back to back, in an
    order rotated per round, so neighbouring measurements of different paths
    share the machine's background; ratios are taken within a round. The
    unlimited-rate cells run afterwards, in rounds of their own: each leaves
    tens of thousands of closed connections behind (TIME_WAIT, conntrack
    entries), and with them interleaved some latency cells of the fastest
    paths showed p50 up to 135 ms on an otherwise 2 ms path."""
    paths = list(bench.paths().items())
    for _, url in paths:  # warm-up: Envoy pools, ARP, conntrack, page cache
        _run_cell(bench, "off", url, warmup, rate)
    cells = {m: Cells() for m in ("p50 ka-off", "p99 ka-off", "p50 ka-on", "p99 ka-on", "max")}
    errors: dict[str, float] = {name: 0.0 for name, _ in paths}
    for phase in (LATENCY_CELLS, ("peak",)):
        for r in range(rounds):
            order = paths[r % len(paths) :] + paths[: r % len(paths)]
            for cell in phase:
                for name, url in order:
                    got = _run_cell(bench, cell, url, seconds, rate)
                    errors[name] += got["errors"]
                    _record(cells, name, cell, got)
    head = "".join(f"{m + (' ms' if m != 'max' else ' conn/s'):>26}" for m in cells)
    rows = [f"{'path':<18}{head}{'errors':>8}"]
    for name, _ in paths:
        row = "".join(f"{c.spread(name):>26}" for c in cells.values())
        rows.append(f"{name:<18}{row}{int(errors[name]):>8}")
    rows += ["", "per-round paired ratios (median [min-max]) against the targets"]
    for metric, path, ref, target in TARGETS + CONTROLS:
        rows.append(f"  {metric:<11}{path} / {ref:<15}{cells[metric].paired(path, ref, target)}")
    rows.append("added over direct, (node Envoy - direct) / (sidecars - direct), per round")
    for metric in ("p50 ka-off", "p99 ka-off", "p50 ka-on", "p99 ka-on"):
        added = cells[metric].overhead("node Envoy", "sidecars", "direct pod IP")
        rows.append(f"  {metric:<11}{added}")
    return rows


def connect_table(bench: Bench, rounds: int, count: int = 2000) -> list[str]:
    """The cost of the translation itself: connect() to each path's address,
    no HTTP, interleaved per round; medians of the per-round p50/p99. The
    per-hook cost comes from a separate pass with kernel BPF stats on."""
    paths = {
        "direct pod IP": (bench.server.ip, PORT_DIRECT),
        "iptables DNAT": (VIP_DNAT, 80),
        "nodemesh kernel": (VIP_KERNEL, 80),
        "direct again": (bench.server.ip, PORT_AGAIN),
    }
    p50, p99 = Cells(), Cells()
    for r in range(rounds):
        order = list(paths.items())
        order = order[r % len(order) :] + order[: r % len(order)]
        for name, (host, port) in order:
            stats = _connect_bench(bench, host, port, count)
            p50.add(name, stats["p50"])
            p99.add(name, stats["p99"])
    rows = [f"{'path':<18}{'connect p50 µs':>24}{'connect p99 µs':>24}"]
    rows += [f"{name:<18}{p50.spread(name):>24}{p99.spread(name):>24}" for name in paths]
    rows += ["", "mean ns per program run during 2000 connects (kernel.bpf_stats_enabled=1)"]
    hooks = [bench.node.mesh, bench.node.proxy_cgroup]
    with bpf_stats():
        for name, (host, port) in paths.items():
            before = hook_counters(hooks)
            _connect_bench(bench, host, port, count)
            delta = hook_delta(before, hook_counters(hooks))
            ran = sorted((p, r, ns) for p, (r, ns) in delta.items() if r)
            cost = ", ".join(f"{p} {runs}x {ns:.0f}ns" for p, runs, ns in ran)
            rows.append(f"  {name:<18}{cost}")
    return rows


def _connect_bench(bench: Bench, host: str, port: int, count: int) -> dict[str, float]:
    probe = [sys.executable, str(PROBE), "connect-bench", host, str(port), str(count)]
    argv = bench.placement.wrap(bench.placement.hey_cpus, probe)
    proc = bench.node.spawn(argv, bench.client.cgroup, bench.client.netns)
    out, _ = proc.communicate(timeout=600)
    stats: dict[str, float] = json.loads(out)
    return stats


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


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5, help="length of each cell")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--sidecars", default="10,25,50")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2, help="seconds per path, discarded")
    parser.add_argument("--hey-cpus", default="0", help="taskset CPU list for the load")
    parser.add_argument("--envoy-cpus", default="1", help="taskset CPU list for every Envoy")
    parser.add_argument("--envoy-concurrency", type=int, default=2)
    parser.add_argument("--nice", type=int, default=-10, help="niceness of every bench process")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--wait-quiet", type=float, default=600, help="seconds to wait for it")
    parser.add_argument("--force", action="store_true", help="run even above --max-load")
    return parser.parse_args()


def _measure(bench: Bench, args: argparse.Namespace) -> None:
    print(
        f"HTTP GET, {args.rate} req/s for {args.seconds}s per cell (10 workers); "
        f"max: 50 workers, keep-alive off; {args.rounds} interleaved rounds after a "
        f"{args.warmup}s warm-up per path; median [min-max] over rounds"
    )
    print("\n".join(latency_table(bench, args.seconds, args.rate, args.rounds, args.warmup)))
    print(bench.foreign.summary())
    print()
    print(f"TCP connect() only, {args.rounds} rounds of 2000 each, interleaved")
    print("\n".join(connect_table(bench, args.rounds)))
    print()
    print("memory (RSS)")
    print("\n".join(memory_table(bench, [int(c) for c in args.sidecars.split(",")])))


def main() -> None:
    args = _args()
    load = wait_for_quiet(args.max_load, args.wait_quiet)
    print(f"load average before: {load:.2f} (limit {args.max_load})")
    if load > args.max_load and not args.force:
        raise SystemExit(f"machine busy (load {load:.2f} > {args.max_load}); --force to run")
    placement = Placement(args.hey_cpus, args.envoy_cpus, args.envoy_concurrency, args.nice)
    print(
        f"placement: hey on CPUs {placement.hey_cpus}, every Envoy on CPUs "
        f"{placement.envoy_cpus} with --concurrency {placement.envoy_concurrency}; "
        f"all at nice {placement.nice}"
    )
    with tempfile.TemporaryDirectory(prefix="nm-bench-") as tmp:
        node = MeshNode(Path(tmp))
        try:
            node.setup()
            bench = Bench(node, Path(tmp), placement)
            bench.setup()
            bench.wait_ready()
            _measure(bench, args)
        finally:
            try:
                loader.cleanup(node.config())
            finally:
                node.teardown()
    # Includes the benchmark's own load; the foreign CPU line above does not.
    print(f"load average after: {loadavg():.2f}")


if __name__ == "__main__":
    main()
