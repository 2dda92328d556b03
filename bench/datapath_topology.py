"""The test node of bench/datapath.py: pods, the nginx app, the nodemesh agent
and node Envoy, the kube-proxy-style DNAT and the Istio-style sidecars.

Built on integration/datapath/node.py (network namespaces and cgroups, no
uplink). Every path's client is `hey` in the same client pod; every path ends
at the same nginx.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.datapath_app import NAMESPACE, write_model, write_nginx
from bench.datapath_envoy import Hop, make_certs, sidecar_config, summarize_listener
from bench.datapath_measure import ForeignCpu, parse_hey
from integration.datapath.node import CGROUP2, NODE_IP, PROBE, MeshNode, sysctl_in
from nodemesh.node.envoy_process import find_envoy_binary, render_bootstrap

REPO = Path(__file__).resolve().parent.parent
VIP_KERNEL, VIP_NODE, VIP_DNAT = "10.96.0.10", "10.96.0.11", "10.96.1.10"
VIP_SIDECAR, VIP_MTLS = "10.96.2.10", "10.96.3.10"
OUT_PORT, OUT_MTLS_PORT, IN_PORT, IN_MTLS_PORT = 15001, 15002, 15006, 15007
NODE_ENVOY_ADMIN, SIDECAR_ADMIN, AGENT_ADMIN = 19000, 19001, 19876
# One app port per path: with keep-alive off, each path leaves thousands of
# TIME_WAIT sockets, and paths sharing a destination port would share (and
# exhaust) one ephemeral-port space, slowing whichever path runs next.
PORT_DIRECT, PORT_DNAT, PORT_KERNEL, PORT_NODE_ENVOY = 8080, 8081, 8082, 8083
# A second direct path (A/A control): how far two identical paths differ is
# the noise floor every ratio has to be read against.
PORT_AGAIN = 8084
APP_PORTS = (PORT_DIRECT, PORT_DNAT, PORT_KERNEL, PORT_NODE_ENVOY, PORT_AGAIN)
SIDECAR_APP_PORT, MTLS_APP_PORT = 8080, 8081
NODE_NAME = "bench-node"


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
    def __init__(self, node: MeshNode, work: Path, placement: Placement, mtls: bool) -> None:
        self.node, self.work, self.placement, self.mtls = node, work, placement, mtls
        self.foreign = ForeignCpu(CGROUP2, node.cgroup_root)
        self.envoy = find_envoy_binary()
        self.client = node.add_pod(NAMESPACE, "client")
        self.server = node.add_pod(NAMESPACE, "server")
        self.server2 = node.add_pod(NAMESPACE, "server2")
        self.summaries: dict[str, str] = {}
        # Per path, the Envoys it crosses and the nginx it ends at, by label:
        # the server-side CPU per request, process by process.
        self.proxy_pids: dict[str, dict[str, int]] = {}

    # -- processes ------------------------------------------------------------
    def envoy_argv(self, config: Path, *extra: str) -> list[str]:
        argv = [self.envoy, "-c", str(config), "--disable-hot-restart"]
        argv += ["--concurrency", str(self.placement.envoy_concurrency), "-l", "error", *extra]
        return self.placement.wrap(self.placement.envoy_cpus, argv)

    def start_envoy(
        self, name: str, config: dict[str, Any], cgroup: Path, ns: str
    ) -> subprocess.Popen[str]:
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        return self.node.spawn(self.envoy_argv(path), cgroup, ns, **quiet)

    def start_nginx(
        self, name: str, ports: tuple[int, ...], cgroup: Path, ns: str
    ) -> subprocess.Popen[str]:
        conf = write_nginx(self.work, name, ports)
        argv = self.placement.wrap(self.placement.envoy_cpus, ["nginx", "-c", str(conf)])
        return self.node.spawn(argv, cgroup, ns, stdout=subprocess.DEVNULL)

    def iptables(self, ns: str, *rule: str) -> None:
        launcher = REPO / "integration/datapath/launcher.py"
        cmd = [sys.executable, str(launcher), "", ns, "--", "iptables", *rule]
        subprocess.run(cmd, check=True, timeout=60)

    def fetch(self, ns: str, url: str) -> str:
        """GET from inside a namespace (the admin ports live on its loopback)."""
        probe = [sys.executable, str(PROBE), "http-get", url]
        proc = self.node.spawn(probe, self.node.outside, ns)
        out, _ = proc.communicate(timeout=120)
        return out

    # -- paths ----------------------------------------------------------------
    def setup(self) -> None:
        n = self.node
        self.tune_namespaces()
        app = self.start_nginx("server", APP_PORTS, self.server.cgroup, self.server.netns)
        app2 = self.start_nginx(
            "server2", (SIDECAR_APP_PORT, MTLS_APP_PORT), self.server2.cgroup, self.server2.netns
        )
        self.start_mesh()
        # kube-proxy style: DNAT where pod traffic enters the node.
        to = f"{self.server.ip}:{PORT_DNAT}"
        dnat = ["-d", VIP_DNAT, "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", to]
        self.iptables(n.netns, "-t", "nat", "-A", "PREROUTING", *dnat)
        sidecar = self.start_sidecars()
        for name in ("direct pod IP", "iptables DNAT", "nodemesh kernel", "direct again"):
            self.proxy_pids[name] = {"nginx": app.pid}
        self.proxy_pids["node Envoy"]["nginx"] = app.pid
        for name in ("sidecars", "sidecars + mTLS"):
            self.proxy_pids[name]["nginx"] = app2.pid
        # A process living in each namespace: its /proc/<pid>/net is that netns's.
        self.ns_pids = {
            "client": sidecar.pid,
            "node": self.node_envoy.pid,
            "server": app.pid,
            "server2": app2.pid,
        }

    def tune_namespaces(self) -> None:
        """Kernel settings for the max-rate cells, the same in every namespace
        of the node, so every path gets them alike (see the connection-rate
        notes in docs/benchmarks.md)."""
        n = self.node
        for ns in (self.client.netns, n.netns, self.server.netns, self.server2.netns):
            sysctl_in(ns, "net.ipv4.ip_local_port_range", "1024 65535")
            # At the default 120 s, the max-rate cells' closed connections filled
            # conntrack tables and new connections of every path stalled.
            sysctl_in(ns, "net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")
            # A client that closes first (hey, whenever an Envoy answers: Envoy
            # waits for the peer to close) keeps each closed connection's port
            # in TIME_WAIT for 60 s. At 5,000 conn/s one destination's share of
            # the ephemeral ports is gone within seconds, and every connect()
            # then scans the range for a free port: cells fell to ~100 conn/s.
            # Reusing a TIME_WAIT port after 1 s (timestamps keep it safe)
            # removes that, for every path alike.
            sysctl_in(ns, "net.ipv4.tcp_tw_reuse", "1")

    def start_mesh(self) -> None:
        """The product: `nodemesh agent` serves the node Envoy over ADS and
        programs the kernel from one model directory; the node Envoy starts
        from the shipped envoy/bootstrap.yaml."""
        n = self.node
        model, sock = self.work / "model", self.work / "xds.sock"
        write_model(
            model,
            kernel=(VIP_KERNEL, self.server.ip, PORT_KERNEL),
            via_envoy=(VIP_NODE, self.server.ip, PORT_NODE_ENVOY),
        )
        agent = [
            sys.executable,
            "-m",
            "nodemesh.cmd.main",
            "agent",
            "run",
            f"--pin-dir={n.pin_dir}",
            f"--cgroup={n.mesh}",
            f"--proxy-cgroup={n.proxy_cgroup}",
            f"--proxy-address={NODE_IP}",
            f"--model-dir={model}",
            f"--node-name={NODE_NAME}",
            f"--xds-socket={sock}",
            f"--admin=127.0.0.1:{AGENT_ADMIN}",
        ]
        self.start_agent(agent)
        bootstrap = self.work / "node-envoy.yaml"
        rendered = render_bootstrap(xds_socket=sock, admin_port=NODE_ENVOY_ADMIN)
        bootstrap.write_text(yaml.safe_dump(rendered))
        node_id = ("--service-node", NODE_NAME, "--service-cluster", "nodemesh")
        self.node_envoy = n.spawn(
            self.envoy_argv(bootstrap, *node_id),
            n.proxy_cgroup,
            n.netns,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.proxy_pids["node Envoy"] = {"node Envoy": self.node_envoy.pid}

    def start_agent(self, agent: list[str]) -> None:
        n = self.node
        argv = self.placement.wrap(self.placement.envoy_cpus, agent)
        # Its log goes to a file: a pipe nobody reads would fill and stall it.
        log = self.work / "agent.log"
        with log.open("w") as out:
            self.agent = n.spawn(argv, n.outside, n.netns, stdout=out, stderr=subprocess.STDOUT)
        for _ in range(1200):
            if "agent ready" in log.read_text():
                break
            if self.agent.poll() is not None:
                raise SystemExit(f"nodemesh agent exited before it was ready:\n{log.read_text()}")
            time.sleep(0.1)
        else:
            raise SystemExit(f"nodemesh agent not ready after 120 s:\n{log.read_text()}")

    def start_sidecars(self) -> subprocess.Popen[str]:
        """Istio's model: outbound capture (REDIRECT in the client pod's OUTPUT)
        to a client-side Envoy, inbound capture (REDIRECT in the server pod's
        PREROUTING) to a server-side Envoy in front of the app. Neither is in
        the mesh cgroup: the nodemesh hooks never act on them."""
        n, certs = self.node, make_certs(self.work) if self.mtls else None
        server2 = self.server2.ip
        out = [Hop("outbound", OUT_PORT, server2, SIDECAR_APP_PORT)]
        inbound = [Hop("inbound", IN_PORT, "127.0.0.1", SIDECAR_APP_PORT)]
        captures = [(VIP_SIDECAR, OUT_PORT, SIDECAR_APP_PORT, IN_PORT)]
        if self.mtls:
            out.append(Hop("outbound-mtls", OUT_MTLS_PORT, server2, MTLS_APP_PORT, "originate"))
            inbound.append(
                Hop("inbound-mtls", IN_MTLS_PORT, "127.0.0.1", MTLS_APP_PORT, "terminate")
            )
            captures.append((VIP_MTLS, OUT_MTLS_PORT, MTLS_APP_PORT, IN_MTLS_PORT))
        configs = {
            "client": (sidecar_config(out, certs, SIDECAR_ADMIN), self.client.netns),
            "server": (sidecar_config(inbound, certs, SIDECAR_ADMIN), self.server2.netns),
        }
        procs = {}
        for side, (config, ns) in configs.items():
            procs[side] = self.start_envoy(f"sidecar-{side}", config, n.outside, ns)
            for listener in config["static_resources"]["listeners"]:
                key = f"sidecar {side} {listener['name']}"
                self.summaries[key] = summarize_listener(listener)
        for name in ("sidecars", "sidecars + mTLS"):
            self.proxy_pids[name] = {f"{side} sidecar": p.pid for side, p in procs.items()}
        for vip, out_port, app_port, in_port in captures:
            outbound = ["OUTPUT", "-d", vip, "-p", "tcp", "--dport", "80"]
            self.iptables(
                self.client.netns, "-t", "nat", "-A", *outbound,
                "-j", "REDIRECT", "--to-ports", str(out_port),
            )  # fmt: skip
            inbound_rule = ["PREROUTING", "-p", "tcp", "--dport", str(app_port)]
            self.iptables(
                self.server2.netns, "-t", "nat", "-A", *inbound_rule,
                "-j", "REDIRECT", "--to-ports", str(in_port),
            )  # fmt: skip
        return procs["client"]

    def paths(self) -> dict[str, str]:
        paths = {
            "direct pod IP": f"http://{self.server.ip}:{PORT_DIRECT}/",
            "iptables DNAT": f"http://{VIP_DNAT}/",
            "nodemesh kernel": f"http://{VIP_KERNEL}/",
            "node Envoy": f"http://{VIP_NODE}/",
            "sidecars": f"http://{VIP_SIDECAR}/",
            "direct again": f"http://{self.server.ip}:{PORT_AGAIN}/",
        }
        if self.mtls:
            paths["sidecars + mTLS"] = f"http://{VIP_MTLS}/"
        return paths

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
        self.summarize_node_envoy()

    def summarize_node_envoy(self) -> None:
        """What nodemesh actually gave the node Envoy, from its config_dump."""
        url = f"http://127.0.0.1:{NODE_ENVOY_ADMIN}/config_dump?resource=dynamic_listeners"
        dump = json.loads(self.fetch(self.node.netns, url))
        for entry in dump.get("configs", []):
            listener = entry.get("active_state", {}).get("listener", {})
            self.summaries[f"node Envoy {listener.get('name', '?')}"] = summarize_listener(listener)
        clusters = self.fetch(self.node.netns, f"http://127.0.0.1:{NODE_ENVOY_ADMIN}/clusters")
        self.summaries["node Envoy upstream"] = ", ".join(
            sorted({ln.split("::")[0] for ln in clusters.splitlines() if "::" in ln})
        )
