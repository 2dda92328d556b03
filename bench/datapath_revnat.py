"""connect() latency as nm_revnat_v1 fills: per-socket cleanup off against on.

Builds a test node (network namespaces and cgroups, no uplink; see
integration/datapath/node.py) with a client pod and a server pod, loads the
datapath, and times N back-to-back pairs of connect() from the client pod: one
to a Service VIP (translated by the cgroup hooks, which file a nm_revnat_v1
entry per socket) and one straight to the server pod IP (no entry). Each
connection closes with a reset at once (no TIME_WAIT, so the client never runs
out of ports), as a short-lived client would. Latency is reported per window
of connections, so the effect of the map filling up (262,144 entries; the
eviction slow path starts once it is full) shows as the run goes.

It runs twice in one invocation, each on a freshly loaded datapath:

  cleanup off   the cgroup/sock_release link is unpinned (detached), so
                nm_revnat_v1 keeps one entry per closed socket until LRU
                eviction, as before the release hook existed
  cleanup on    the datapath as shipped: entries go when their socket closes

"cleanup off" is the old behaviour minus one thing: the sockops additions
(one nm_revnat_v1 lookup per TCP connect, one STATE_CB run per translated
connect) stay. To compare against the exact old programs, run this script
with PYTHONPATH pointing at a checkout of the old commit (there is no
release link to detach there, so both columns show the old code).

Then, with kernel.bpf_stats_enabled=1, the mean cost per run of each hook
over a short pass with cleanup on. Run as root, on a quiet machine:

    .venv/bin/python bench/datapath_revnat.py [--connections 300000] [--window 25000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# integration/ first: its datapath package, not bench/datapath.py (this
# script's own directory is already on the path, for datapath_measure).
sys.path.insert(0, str(REPO / "integration"))
sys.path.append(str(REPO))  # after PYTHONPATH, so an old checkout can stand in

VIP, PORT = "10.96.0.10", 8080
RELEASE_LINK = "nm_sock_release"
# One CPU each, the same for both modes (the machine has two).
SERVER_CPU, CLIENT_CPU = 0, 1 % (os.cpu_count() or 1)


# -- what runs inside the pods ------------------------------------------------
def serve(port: int, cpu: int) -> None:
    """Accept and drop: the client measures the handshake only."""
    os.sched_setaffinity(0, {cpu})
    srv = socket.create_server(("0.0.0.0", port), backlog=4096)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        conn.close()


def _connect_us(addr: tuple[str, int], linger: bytes) -> float:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    start = time.perf_counter_ns()
    s.connect(addr)
    took = (time.perf_counter_ns() - start) / 1000
    s.close()
    return took


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def client(vip: str, direct: str, port: int, count: int, window: int, cpu: int) -> None:
    """Pairs of connects (VIP, then pod IP); JSON p50/p99 per window."""
    os.sched_setaffinity(0, {cpu})
    linger = struct.pack("ii", 1, 0)
    windows: list[dict[str, float]] = []
    xl: list[float] = []
    dr: list[float] = []
    for i in range(1, count + 1):
        xl.append(_connect_us((vip, 80), linger))
        dr.append(_connect_us((direct, port), linger))
        if i % window == 0 or i == count:
            windows.append(
                {
                    "upto": i,
                    "xl50": _pct(xl, 0.5),
                    "xl99": _pct(xl, 0.99),
                    "dr50": _pct(dr, 0.5),
                    "dr99": _pct(dr, 0.99),
                }
            )
            xl, dr = [], []
    print(json.dumps(windows), flush=True)


# -- the driver ---------------------------------------------------------------
def _setup(workdir: Path) -> tuple[Any, Any, Any]:
    from datapath.node import MeshNode
    from datapath.plans import frontend, plan

    from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
    from nodemesh.ebpf import applier, loader
    from nodemesh.ebpf.endpoints import DirectoryPodCgroups

    node = MeshNode(workdir)
    node.setup()
    client_pod, server_pod = node.add_pod("default", "client"), node.add_pod("default", "server")

    def load() -> None:
        loader.cleanup(node.config())
        loader.load(node.config())
        fe = frontend(VIP, 80, pb.TCP, [(server_pod.ip, PORT)], service="default/server")
        pods = DirectoryPodCgroups(node.mesh)
        applier.apply(plan(fe), node.config().maps_dir, "10.0.0.1", pods)

    return node, (client_pod, server_pod), load


def _revnat_entries(node: Any) -> int:
    from nodemesh.ebpf import pinned

    with pinned.open_map(node.config().maps_dir, pinned.REVNAT) as m:
        return sum(1 for _ in m.iter_keys())


def _run_client(node: Any, pods: Any, count: int, window: int) -> list[dict[str, float]]:
    client_pod, server_pod = pods
    argv = [sys.executable, __file__, "--client", server_pod.ip, str(count), str(window)]
    proc = node.spawn(argv, client_pod.cgroup, client_pod.netns)
    out, _ = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise SystemExit("the client failed")
    windows: list[dict[str, float]] = json.loads(out)
    return windows


def _mode(node: Any, pods: Any, load: Any, cleanup: bool, args: argparse.Namespace) -> Any:
    load()
    link = node.config().links_dir / RELEASE_LINK
    present = link.exists()
    if not cleanup and present:
        link.unlink()  # the last reference: the kernel detaches the program
    windows = _run_client(node, pods, args.connections, args.window)
    return windows, _revnat_entries(node), present


def _cells(w: dict[str, float]) -> str:
    gap = w["xl99"] - w["dr99"]
    return f"{w['xl50']:>7.1f}/{w['xl99']:<7.1f}{w['dr50']:>7.1f}/{w['dr99']:<7.1f}{gap:>+7.1f}"


def _table(off: list[dict[str, float]], on: list[dict[str, float]]) -> list[str]:
    """µs per window: VIP p50/p99, direct p50/p99, and VIP p99 minus direct p99."""
    sub = f"{'VIP p50/p99':^15}{'direct p50/p99':^15}{'Δp99':>7}"
    rows = [f"{'':>9} | {'cleanup off':^37} | {'cleanup on':^37}"]
    rows += [f"{'connects':>9} | {sub} | {sub}"]
    rows += ["-" * len(rows[1])]
    for a, b in zip(off, on, strict=True):
        rows.append(f"{int(a['upto']):>9} | {_cells(a)} | {_cells(b)}")
    return rows


def _hook_costs(node: Any, pods: Any, load: Any, count: int) -> list[str]:
    from datapath_measure import bpf_stats, hook_counters, hook_delta

    load()
    hooks = [node.mesh]
    with bpf_stats():
        before = hook_counters(hooks)
        _run_client(node, pods, count, count)
        delta = hook_delta(before, hook_counters(hooks))
    rows = [f"mean ns per program run over {count} VIP + {count} direct connects"]
    rows += [
        f"  {name:<18}{runs:>8} runs {ns:>8.0f} ns"
        for name, (runs, ns) in sorted(delta.items())
        if runs
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300_000, help="pairs per mode")
    parser.add_argument("--window", type=int, default=25_000)
    parser.add_argument("--stats-connections", type=int, default=20_000)
    parser.add_argument("--max-load", type=float, default=1.0, help="1-minute load to wait for")
    parser.add_argument("--wait-quiet", type=float, default=900, help="seconds to wait for it")
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        serve(args.server, cpu=SERVER_CPU)
        return
    if args.client:
        direct, count, window = args.client
        client(VIP, direct, PORT, int(count), int(window), cpu=CLIENT_CPU)
        return
    drive(args)


def drive(args: argparse.Namespace) -> None:
    import tempfile

    from datapath_measure import wait_for_quiet

    from nodemesh.ebpf import loader

    quiet = wait_for_quiet(args.max_load, args.wait_quiet)
    print(f"load before: {quiet:.2f} (limit {args.max_load}; uptime: {_uptime()})")
    workdir = Path(tempfile.mkdtemp(prefix="nm-bench-revnat-"))
    node, pods, load = _setup(workdir)
    try:
        _start_server(node, pods[1])
        off, off_left, present = _mode(node, pods, load, cleanup=False, args=args)
        on, on_left, _ = _mode(node, pods, load, cleanup=True, args=args)
        if not present:
            print("no cgroup/sock_release link in this tree: both columns are the same code")
        print("\n".join(_table(off, on)))
        print(f"nm_revnat_v1 entries after the run: cleanup off {off_left}, cleanup on {on_left}")
        print()
        print("\n".join(_hook_costs(node, pods, load, args.stats_connections)))
        print(f"load after: {_uptime()}")
    finally:
        try:
            loader.cleanup(node.config())
        finally:
            node.teardown()


def _start_server(node: Any, pod: Any) -> None:
    argv = [sys.executable, __file__, "--server", str(PORT)]
    proc = node.spawn(argv, pod.cgroup, pod.netns)
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise SystemExit(f"the server did not start: {line!r}")


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


if __name__ == "__main__":
    main()
