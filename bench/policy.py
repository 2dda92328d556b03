"""What L3/L4 policy costs per connection, in one run, side by side.

    sudo .venv/bin/python -m bench.policy [--rounds 3] [--connects 2000] [--part 1|2|3]

On one node of network namespaces (integration/datapath/node.py), two pods:

1. Hook cost per connect() from `bpf_stats` (kernel.bpf_stats_enabled=1,
   which itself adds ~0.1 µs to every program run): the client pod's
   socket-side programs for a connect + getpeername + close, for a
   destination that is no VIP and for a VIP, on the code of `--base`
   (main before this work, loaded from git beside today's) and today's,
   without policy and with 1,000 policies over 10,000 identities enforcing
   on both pods (the pair allowed). The server's ingress program is
   reported apart (it runs on the server pod's packets).
2. The same allow rule among N NetworkPolicies, N = 10 .. 10,000, enforced
   by nodemesh (policy maps + the ingress program) and by an
   iptables/ipset implementation in the node namespace, as kube-router or
   Calico's iptables mode does (per policy: an ipset of source pods and an
   ACCEPT rule for the destination pod and port; conntrack lets established
   traffic through first; the pair's rule is last, as a pod whose rules come
   after everyone else's). Cells: connect() p50/p99 in µs, interleaved per
   round, medians over rounds; nodemesh's BPF ns per connect beside.
3. (bench/policy_scale.py) 1,000 policies x 10,000 identities: compile and
   first write; then at 5,000 pods x 100 policies the pinned map memory,
   map by map, and one pod relabelled: model build, compile and map writes,
   from nothing (as before the incremental compiler) and incrementally.
4. (bench/policy_scale.py) The kernel path (client -> VIP -> server pod,
   connect + first reply + close: keep-alive off) p50/p99 with 1,000
   policies over 10,000 identities against the same path with none, and an
   A/A control (none measured twice), per round and in how many rounds
   p99 stayed within 1.05x.

Part 1 also attaches programs that do nothing beside ours (bench/
policy_floor.py): their ns per run is what bpf_stats and the dispatch to a
program cost by themselves, and the "net" column is ours above that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.datapath_measure import bpf_stats, hook_counters, hook_delta
from bench.old_datapath import load_revision
from bench.policy_floor import PREFIX, Floor, floor_ns, net_per_connect
from integration.datapath.node import NODE_IP, PROBE, MeshNode
from integration.datapath.plans import frontend, plan
from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, loader, policy_apply, policy_incremental
from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore

BASE = "7d9f7cd"  # main before the hook-cost work (issue 12 follow-up)
VIP = "10.96.0.10"
VIP_POLICED = "10.96.0.11"  # -> the server pod on POLICED_PORT (part 4)
# 8080: the VIP's backend port; 9000: a port no backend uses; 8081: policed.
PLAIN_PORT, OTHER_PORT, POLICED_PORT = 8080, 9000, 8081
IDENTITIES, POLICIES = 10_000, 1_000
RULE_COUNTS = (10, 100, 1_000, 10_000)
CONNECT_LOOP = """
import json, socket, struct, sys, time
n, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
samples = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    t = time.perf_counter_ns()
    s.connect((host, port))
    samples.append((time.perf_counter_ns() - t) / 1000)
    s.getpeername()
    s.close()
samples.sort()
print(json.dumps({"p50": samples[n // 2], "p99": samples[int(n * 0.99)]}))
"""


def pod(name: str, ip: str, app: str, node: str = "node-1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "bench", "labels": {"app": app}},
        "spec": {"nodeName": node},
        "status": {"podIP": ip, "phase": "Running"},
    }


def knp(index: int, subject: str, peers: list[str], port: int, egress: bool) -> dict[str, Any]:
    """Ingress from `peers` on `port`; with `egress`, also egress to them
    (the pair's policies: both pods enforce both directions)."""
    selectors = [{"podSelector": {"matchLabels": {"app": p}}} for p in peers]
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {"app": subject}},
        "policyTypes": ["Ingress", "Egress"] if egress else ["Ingress"],
        "ingress": [{"from": selectors, "ports": [{"port": port}]}],
    }
    if egress:
        spec["egress"] = [{"to": selectors}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"np{index}", "namespace": "bench"},
        "spec": spec,
    }


def synthetic_ip(i: int) -> str:
    return f"10.{128 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def scale_model(client_ip: str, server_ip: str, policies: int) -> MeshModel:
    """IDENTITIES pods (one identity each, two of them real) and `policies`
    policies of ten peers each; the last one lets the client reach the
    server on POLICED_PORT (and the server answer)."""
    store = MeshStore()
    store.apply("b", pod("client", client_ip, "client"))
    store.apply("b", pod("server", server_ip, "server"))
    for i in range(IDENTITIES - 2):
        store.apply("b", pod(f"p{i}", synthetic_ip(i), f"a{i}"))
    for j in range(policies - 1):
        peers = [f"a{(j * 7 + k) % (IDENTITIES - 2)}" for k in range(10)]
        store.apply("b", knp(j, f"a{j % (IDENTITIES - 2)}", peers, 80, egress=False))
    store.apply("b", knp(policies, "server", ["client"], POLICED_PORT, egress=True))
    store.apply("b", knp(policies + 1, "client", ["server"], POLICED_PORT, egress=True))
    return store.build()


class Bench:
    def __init__(self, node: MeshNode, workdir: Path, base: str = BASE) -> None:
        self.node = node
        self.client = node.add_pod("bench", "client")
        self.server = node.add_pod("bench", "server")
        quiet: dict[str, Any] = {"stderr": subprocess.DEVNULL}
        # Outside the mesh: part 1 counts the client's programs only.
        servers = (
            (PLAIN_PORT, node.outside),
            (OTHER_PORT, node.outside),
            (POLICED_PORT, self.server.cgroup),
        )
        for port, cgroup in servers:
            argv = [sys.executable, str(PROBE), "tcp-server", str(port), "s"]
            proc = node.spawn(argv, cgroup, self.server.netns, **quiet)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        self.new = node.config()
        loader.load(self.new)
        old_mesh = node.cgroup_root / "mesh-old"
        (old_mesh / "bench_client").mkdir(parents=True)
        self.old = loader.DatapathConfig(pin_dir=node.bpffs / "old", cgroup=old_mesh)
        load_revision(base, self.old, workdir)
        self.cgroups = {"base": old_mesh / "bench_client", "new": self.client.cgroup}
        the_plan = plan(
            frontend(VIP, 80, pb.TCP, [(self.server.ip, PLAIN_PORT)]),
            frontend(VIP_POLICED, 80, pb.TCP, [(self.server.ip, POLICED_PORT)], "bench/policed"),
        )
        for config in (self.new, self.old):
            applier.apply(the_plan, config.maps_dir, NODE_IP, DirectoryPodCgroups(config.cgroup))
        self.pods = DirectoryPodCgroups(node.mesh)
        self.host_ips = [NODE_IP, "10.0.1.1", "10.0.2.1"]
        # As the agent does: one compiler, which reuses the previous compile.
        self.compiler = policy_incremental.Compiler()
        self.floor = Floor(workdir, list(self.cgroups.values()))

    def set_policy(self, model: MeshModel | None) -> dict[str, float]:
        """Apply `model`'s policy (None: none); seconds to compile and write."""
        if model is None:
            model = MeshStore().build()
        t0 = time.perf_counter()
        compiled = self.compiler.plan(model, "node-1", self.host_ips)
        t1 = time.perf_counter()
        policy_apply.apply(compiled, self.new.maps_dir, self.pods)
        return {"compile_s": t1 - t0, "write_s": time.perf_counter() - t1}

    def connects(
        self, code: str, host: str, port: int, n: int
    ) -> tuple[dict[str, float], dict[str, tuple[int, float]]]:
        return self.run(code, CONNECT_LOOP, host, port, n)

    def run(
        self, code: str, script: str, host: str, port: int, n: int
    ) -> tuple[dict[str, float], dict[str, tuple[int, float]]]:
        """`script` in the client pod; its JSON and the programs' runs."""
        cgroups = [(self.new if code == "new" else self.old).cgroup, self.cgroups[code]]
        before = hook_counters(cgroups)
        argv = [sys.executable, "-c", script, str(n), host, str(port)]
        out, _ = self.node.spawn(argv, self.cgroups[code], self.client.netns).communicate(
            timeout=600
        )
        return json.loads(out), hook_delta(before, hook_counters(cgroups))


def per_connect(delta: dict[str, tuple[int, float]], n: int, skip: tuple[str, ...] = ()) -> float:
    return (
        sum(
            runs * ns
            for name, (runs, ns) in delta.items()
            if name not in skip and not name.startswith(PREFIX)
        )
        / n
    )


INGRESS = "nm_policy_ingress"
# A policed server in the mesh: only its ingress program's cost is reported.
SERVER_SIDE = "server side"


def _runs(values: list[tuple[int, float]], n: int) -> float:
    return statistics.median(r for r, _ in values) / n


def part1(bench: Bench, rounds: int, n: int, scale: MeshModel) -> None:
    cells: dict[str, list[float]] = {}
    nets: dict[str, list[float]] = {}
    floors: list[float] = []
    progs: dict[str, dict[str, list[tuple[int, float]]]] = {}
    with bpf_stats():
        for _ in range(rounds):
            for label, code, policy, host, port in (
                ("base, not a VIP", "base", None, bench.server.ip, PLAIN_PORT),
                ("today, not a VIP", "new", None, bench.server.ip, PLAIN_PORT),
                ("base, no backend's port", "base", None, bench.server.ip, OTHER_PORT),
                ("today, no backend's port", "new", None, bench.server.ip, OTHER_PORT),
                ("base, VIP", "base", None, VIP, 80),
                ("today, VIP", "new", None, VIP, 80),
                ("today + policy, not a VIP", "new", scale, bench.server.ip, PLAIN_PORT),
                ("today + policy, VIP", "new", scale, VIP, 80),
                (SERVER_SIDE, "new", scale, bench.server.ip, POLICED_PORT),
            ):
                bench.set_policy(policy)
                _, delta = bench.connects(code, host, port, n)
                cells.setdefault(label, []).append(per_connect(delta, n, (INGRESS,)))
                floor = floor_ns(delta)
                floors.append(floor)
                nets.setdefault(label, []).append(net_per_connect(delta, n, floor, (INGRESS,)))
                for name, (runs, ns) in delta.items():
                    progs.setdefault(label, {}).setdefault(name, []).append((runs, ns))
    print(f"\n1. BPF per connect()+getpeername()+close() of the client, ns (median of {rounds})")
    print(
        f"   floor (an empty program's run with bpf_stats on): {statistics.median(floors):.0f} ns;"
        " net = ours above it"
    )
    print(f"  {'':30s} {'gross':>7} {'net':>6}   programs: runs per connect x ns per run")
    cells.pop(SERVER_SIDE, None)
    for label, values in cells.items():
        detail = ", ".join(
            f"{name} {_runs(v, n):.1f}x{statistics.median(ns for _, ns in v):.0f}"
            for name, v in sorted(progs[label].items())
            if any(r for r, _ in v) and name != INGRESS
        )
        net = statistics.median(nets[label])
        print(f"  {label:30s} {statistics.median(values):7.0f} {net:6.0f}   ({detail})")
    ing = progs.pop(SERVER_SIDE, {}).get(INGRESS, [])
    if ing:
        per_conn = _runs(ing, n)
        ns_per_run = statistics.median(x for _, x in ing)
        print(f"  server side: {INGRESS} {per_conn:.1f} runs x {ns_per_run:.0f} ns per connection")


IPT_CHAIN = "NMBENCH"


def iptables(node: MeshNode, args: list[str], stdin: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", node.netns, *args]
    subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True)


def iptables_rules(node: MeshNode, count: int, client_ip: str, server_ip: str) -> None:
    """kube-router style: an ipset of sources and an ACCEPT per policy; the
    pair's rule last; everything else to the server dropped."""
    sets = [f"create nmsrc{i} hash:ip" for i in range(count)]
    for i in range(count - 1):
        sets += [f"add nmsrc{i} {synthetic_ip((i * 7 + k) % IDENTITIES)}" for k in range(10)]
    sets.append(f"add nmsrc{count - 1} {client_ip}")
    iptables(node, ["ipset", "restore"], "\n".join(sets) + "\n")
    rules = ["*filter", f":{IPT_CHAIN} - [0:0]", f"-A FORWARD -j {IPT_CHAIN}"]
    rules.append(f"-A {IPT_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
    for i in range(count - 1):
        dst = synthetic_ip(i)
        rules.append(
            f"-A {IPT_CHAIN} -d {dst} -p tcp --dport 80 -m set --match-set nmsrc{i} src -j ACCEPT"
        )
    rules.append(
        f"-A {IPT_CHAIN} -d {server_ip} -p tcp --dport {POLICED_PORT} "
        f"-m set --match-set nmsrc{count - 1} src -j ACCEPT"
    )
    rules.append(f"-A {IPT_CHAIN} -d {server_ip} -j DROP")
    rules.append("COMMIT")
    iptables(node, ["iptables-legacy-restore", "--noflush"], "\n".join(rules) + "\n")


def iptables_clear(node: MeshNode) -> None:
    rules = "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"
    iptables(node, ["iptables-legacy-restore"], rules)
    iptables(node, ["ipset", "destroy"])


def part2(bench: Bench, rounds: int, n: int) -> None:
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    models = {count: scale_model(bench.client.ip, bench.server.ip, count) for count in RULE_COUNTS}
    with bpf_stats():
        for _ in range(rounds):
            bench.set_policy(None)
            lat, _ = bench.connects("new", bench.server.ip, POLICED_PORT, n)
            results.setdefault(("none", 0), []).append(lat)
            for count in RULE_COUNTS:
                bench.set_policy(models[count])
                lat, delta = bench.connects("new", bench.server.ip, POLICED_PORT, n)
                lat["bpf_ns"] = per_connect(delta, n)
                results.setdefault(("nodemesh", count), []).append(lat)
                bench.set_policy(None)
                iptables_rules(bench.node, count, bench.client.ip, bench.server.ip)
                lat, _ = bench.connects("new", bench.server.ip, POLICED_PORT, n)
                iptables_clear(bench.node)
                results.setdefault(("iptables", count), []).append(lat)
    print(f"\n2. connect() to an allowed pod, µs (median of {rounds}); rules = policies")
    print(
        f"  {'rules':>6}  {'nodemesh p50/p99':>18}  {'BPF ns/conn':>11}  {'iptables p50/p99':>18}"
    )
    base = results[("none", 0)]
    print(f"  {'none':>6}  {_lat(base):>18}  {'':>11}  {_lat(base):>18}")
    for count in RULE_COUNTS:
        nm, ipt = results[("nodemesh", count)], results[("iptables", count)]
        bpf = statistics.median(r["bpf_ns"] for r in nm)
        print(f"  {count:>6}  {_lat(nm):>18}  {bpf:>11.0f}  {_lat(ipt):>18}")


def _lat(rows: list[dict[str, float]]) -> str:
    p50 = statistics.median(r["p50"] for r in rows)
    return f"{p50:.0f}/{statistics.median(r['p99'] for r in rows):.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--part", choices=["1", "2", "3", "4", "all"], default="all")
    parser.add_argument("--base", default=BASE, help="the revision of the 'base' cells")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nm-bench-policy-"))
    node = MeshNode(workdir)
    bench: Bench | None = None
    try:
        node.setup()
        bench = Bench(node, workdir, args.base)
        scale = scale_model(bench.client.ip, bench.server.ip, POLICIES)
        from bench import policy_scale  # it builds on this module's Bench

        policy_scale.first_apply(bench, scale)
        if args.part in ("3", "all"):
            policy_scale.relabel(bench)
        if args.part in ("1", "all"):
            part1(bench, args.rounds, args.connects, scale)
        if args.part in ("2", "all"):
            part2(bench, args.rounds, args.connects)
        if args.part in ("4", "all"):
            policy_scale.kernel_path(bench, args.rounds, args.connects, scale)
    finally:
        if bench is not None:
            bench.floor.close()
        for config in (node.config(),):
            loader.cleanup(config)
        node.teardown()


if __name__ == "__main__":
    main()
