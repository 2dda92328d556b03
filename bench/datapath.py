"""Datapath benchmark: the same client and server pods, six ways between them.

Builds a test node (network namespaces and cgroups, no uplink; see
integration/datapath/node.py) and measures, in one run, with `hey` inside the
client pod:

  direct         client -> server pod IP
  iptables DNAT  client -> VIP, DNAT in the node namespace's PREROUTING (kube-proxy style)
  nodemesh       client -> VIP, translated at connect() by the cgroup hooks
  node Envoy     client -> VIP, steered by the hooks to the node Envoy, which
                 routes it to the Service's backends; Envoy bootstrapped from
                 envoy/bootstrap.yaml and configured over ADS, and the kernel
                 programmed, by `nodemesh agent` from one model directory
                 (Services, EndpointSlices, a CiliumEnvoyConfig)
  sidecars       client -> VIP, iptables REDIRECT (outbound capture) to a
                 client-side Envoy, which connects to the server pod, where
                 iptables REDIRECT (inbound capture) hands it to a server-side
                 Envoy in front of the app (Istio's model)
  sidecars + mTLS  the same with mTLS between the two sidecars (Istio's
                 default), certificates made at bench time (--no-mtls: off)

for each: p50/p99 at a fixed rate (keep-alive off and on) and the maximum
new-connection rate (keep-alive off, no rate limit). Then connect() alone and
the hooks' cost, and memory: RSS of the node Envoy plus the agent, against N
sidecar Envoys.

The app is nginx (one worker, no access log) on every path, so the server
side costs the same on every path and no path crosses an Envoy that is not
one of its proxies. Every Envoy listener (node and sidecars) runs the
original_dst listener filter and an HTTP connection manager with the router
alone and no access log; the run prints each one's filters (the node Envoy's
from its config_dump).

Noise control (the machine has 2 cores, shared with other work): hey runs on
one fixed CPU set and every Envoy (node, sidecars), nginx and the agent on
another, each Envoy with the same --concurrency; each path gets a discarded warm-up cell; rounds
interleave the paths cell by cell in a rotated order; the report gives the
median and [min-max] of the per-round values, the per-round paired ratios
behind each target and in how many rounds each target was met, and the CPU
that other work took during the cells. The run waits for the 1-minute load to
drop to --max-load and refuses to start above it (--force to run anyway).
Run as root:

    .venv/bin/python -m bench.datapath [--seconds 5] [--rate 1000] [--rounds 7]
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

from bench.datapath_envoy import Hop, sidecar_config
from bench.datapath_measure import (
    CONTROLS,
    LATENCY_CELLS,
    TARGETS,
    Cells,
    bpf_stats,
    counter_delta,
    cpu_seconds,
    hook_counters,
    hook_delta,
    loadavg,
    map_memlock,
    net_counters,
    rss_kib,
    wait_for_quiet,
)
from bench.datapath_topology import (
    PORT_AGAIN,
    PORT_DIRECT,
    SIDECAR_APP_PORT,
    VIP_DNAT,
    VIP_KERNEL,
    Bench,
    Placement,
)
from integration.datapath.node import PROBE, MeshNode
from nodemesh.ebpf import loader


def _run_cell(bench: Bench, cell: str, url: str, seconds: int, rate: int) -> dict[str, float]:
    workers, dur = 10, f"{seconds}s"
    fixed = ("-z", dur, "-c", str(workers), "-q", str(rate // workers))
    with bench.foreign.window():
        if cell == "off":
            return bench.hey(url, *fixed, "-disable-keepalive")
        if cell == "on":
            return bench.hey(url, *fixed)
        return bench.hey(url, "-z", dur, "-c", "50", "-disable-keepalive")


def _rotated(paths: list[tuple[str, str]], r: int) -> list[tuple[str, str]]:
    return paths[r % len(paths) :] + paths[: r % len(paths)]


LATENCY_METRICS = ("p50 ka-off", "p99 ka-off", "p50 ka-on", "p99 ka-on")


def latency_table(bench: Bench, seconds: int, rate: int, rounds: int, warmup: int) -> list[str]:
    """Each round runs every latency cell for every path back to back, in an
    order rotated per round, so neighbouring measurements of different paths
    share the machine's background; ratios are taken within a round."""
    paths = list(bench.paths().items())
    for _, url in paths:  # warm-up: Envoy pools, ARP, conntrack, page cache
        _run_cell(bench, "off", url, warmup, rate)
    cells = {m: Cells() for m in LATENCY_METRICS}
    # Per keep-alive setting and path: CPU µs per request of each process crossed.
    cpu: dict[str, dict[str, Cells]] = {"ka-off": {}, "ka-on": {}}
    errors: dict[str, float] = {name: 0.0 for name, _ in paths}
    for r in range(rounds):
        for cell in LATENCY_CELLS:
            ka = "ka-off" if cell == "off" else "ka-on"
            for name, url in _rotated(paths, r):
                crossed = bench.proxy_pids.get(name, {})
                before = {label: cpu_seconds([pid]) for label, pid in crossed.items()}
                got = _run_cell(bench, cell, url, seconds, rate)
                for label, pid in crossed.items() if got.get("ok") else ():
                    used = (cpu_seconds([pid]) - before[label]) / got["ok"] * 1e6
                    cpu[ka].setdefault(name, Cells()).add(label, used)
                errors[name] += got["errors"]
                cells[f"p50 {ka}"].add(name, got.get("p50", 0))
                cells[f"p99 {ka}"].add(name, got.get("p99", 0))
    head = "".join(f"{m + ' ms':>24}" for m in cells)
    rows = [f"{'path':<18}{head}{'errors':>8}"]
    for name, _ in paths:
        row = "".join(f"{c.spread(name):>24}" for c in cells.values())
        rows.append(f"{name:<18}{row}{int(errors[name]):>8}")
    return rows + _cpu_rows(cpu) + _ratio_rows(bench, cells)


def _cpu_rows(cpu: dict[str, dict[str, Cells]]) -> list[str]:
    rows = ["", "CPU µs per request of each process the path crosses (utime+stime), median"]
    for name in cpu["ka-off"]:
        for ka in ("ka-off", "ka-on"):
            per = cpu[ka].get(name, Cells()).values
            each = ", ".join(f"{label} {statistics.median(v):.0f}" for label, v in per.items())
            total = sum(statistics.median(v) for v in per.values())
            rows.append(f"  {name:<18}{ka:<8}{total:>5.0f} = {each}")
    return rows


def _ratio_rows(bench: Bench, cells: dict[str, Cells]) -> list[str]:
    rows = ["", "per-round paired ratios (median [min-max]) against the targets"]
    targets = TARGETS + tuple(
        (metric, "node Envoy", "sidecars + mTLS", 0.5)
        for metric in ("p99 ka-off", "p99 ka-on")
        if bench.mtls
    )
    for metric, path, ref, target in targets + CONTROLS:
        rows.append(f"  {metric:<11}{path} / {ref:<16}{cells[metric].paired(path, ref, target)}")
    refs = ["sidecars", *(["sidecars + mTLS"] if bench.mtls else [])]
    for ref in refs:
        rows.append(f"added over direct, (node Envoy - direct) / ({ref} - direct), per round")
        for metric in LATENCY_METRICS:
            added = cells[metric].overhead("node Envoy", ref, "direct pod IP")
            rows.append(f"  {metric:<11}{added}")
    return rows


def peak_table(bench: Bench, seconds: int, rounds: int) -> list[str]:
    """The maximum new-connection rate: 50 hey workers, keep-alive off, no
    rate limit, in rounds of their own after the latency rounds (each cell
    leaves tens of thousands of closed connections behind; interleaved with
    the latency cells, they spoiled the cell after them). Around each cell,
    the TCP counters of every namespace of the node are read, so a cell that
    collapses shows why."""
    paths = list(bench.paths().items())
    rates, moved = Cells(), {name: dict[str, int]() for name, _ in paths}
    errors = {name: 0.0 for name, _ in paths}
    for r in range(rounds):
        for name, url in _rotated(paths, r):
            before = {ns: net_counters(pid) for ns, pid in bench.ns_pids.items()}
            got = _run_cell(bench, "peak", url, seconds, 0)
            rates.add(name, got.get("rps", 0))
            errors[name] += got["errors"]
            for ns, pid in bench.ns_pids.items():
                for key, value in counter_delta(before[ns], net_counters(pid)).items():
                    # Summed, except TIME_WAIT sockets at the cell's end: the highest.
                    got_before = moved[name].get(f"{ns}:{key}", 0)
                    total = max(got_before, value) if key == "tw" else got_before + value
                    moved[name][f"{ns}:{key}"] = total
    rows = [f"{'path':<18}{'max conn/s':>26}{'errors':>8}   per round"]
    for name, _ in paths:
        per_round = " ".join(f"{v:.0f}" for v in rates.values[name])
        rows.append(f"{name:<18}{rates.spread(name):>26}{int(errors[name]):>8}   {per_round}")
    rows += [
        "",
        f"TCP counters that moved during the max-rate cells, summed over {rounds} rounds, per "
        "netns (tw: the most TIME_WAIT sockets in that netns at a cell's end, all paths')",
    ]
    for name, _ in paths:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(moved[name].items()) if v)
        rows.append(f"  {name:<18}{shown or '-'}")
    median = {name: statistics.median(rates.values[name]) for name, _ in paths}
    slow = [n for n, _ in paths if min(rates.values[n]) < 0.5 * median[n]]
    rows.append(f"cells under half their path's median: {', '.join(slow) or 'none'}")
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
    """RSS of the node side (the node Envoy and the one-process agent that
    serves it and the kernel, both as measured all along) against N sidecar
    Envoys with a two-listener config each."""
    n = bench.node
    envoy_kib, agent_kib = rss_kib(bench.node_envoy.pid), rss_kib(bench.agent.pid)
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
            cfg = sidecar_config(
                [
                    Hop("outbound", 30000 + 2 * i, bench.server2.ip, SIDECAR_APP_PORT),
                    Hop("inbound", 30001 + 2 * i, "127.0.0.1", SIDECAR_APP_PORT),
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
    parser.add_argument("--no-mtls", action="store_true", help="leave out the mTLS sidecar row")
    parser.add_argument(
        "--parts", default="latency,peak,connect,memory", help="which tables (for development)"
    )
    return parser.parse_args()


def _measure(bench: Bench, args: argparse.Namespace) -> None:
    parts = set(args.parts.split(","))
    print("what each path's proxies run (node Envoy: from its config_dump):")
    for name, summary in bench.summaries.items():
        print(f"  {name}: {summary}")
    print()
    if "latency" in parts:
        print(
            f"HTTP GET, {args.rate} req/s for {args.seconds}s per cell (10 workers), keep-alive "
            f"off and on; {args.rounds} interleaved rounds after a {args.warmup}s warm-up per "
            "path; median [min-max] over rounds"
        )
        agent_cpu, started = cpu_seconds([bench.agent.pid]), time.monotonic()
        print("\n".join(latency_table(bench, args.seconds, args.rate, args.rounds, args.warmup)))
        agent_cpu = cpu_seconds([bench.agent.pid]) - agent_cpu
        wall = time.monotonic() - started
        print(f"nodemesh agent CPU meanwhile: {agent_cpu:.2f} s in {wall:.0f} s")
        print()
    if "peak" in parts:
        print(f"max new-connection rate: 50 workers, keep-alive off, {args.seconds}s per cell")
        print("\n".join(peak_table(bench, args.seconds, args.rounds)))
        print()
    print(bench.foreign.summary())
    if "connect" in parts:
        print()
        print(f"TCP connect() only, {args.rounds} rounds of 2000 each, interleaved")
        print("\n".join(connect_table(bench, args.rounds)))
    if "memory" in parts:
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
        f"placement: hey on CPUs {placement.hey_cpus}; every Envoy (node, sidecars) with "
        f"--concurrency {placement.envoy_concurrency}, nginx (1 worker) and the agent on CPUs "
        f"{placement.envoy_cpus}; all at nice {placement.nice}"
    )
    with tempfile.TemporaryDirectory(prefix="nm-bench-") as tmp:
        node = MeshNode(Path(tmp))
        try:
            node.setup()
            bench = Bench(node, Path(tmp), placement, mtls=not args.no_mtls)
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
