"""connect() latency as nm_revnat_v1 fills: the BPF programs of an older
revision (no per-socket cleanup) against the working tree's, in one run.

Builds two test nodes (network namespaces and cgroups, no uplink; see
integration/datapath/node.py), each with a client pod, a server pod and its
own datapath (own mesh cgroup and bpffs): node "old" runs the BPF programs of
`--old-rev` (default 50d2725^, the commit before cgroup/sock_release; its
sources are taken with `git show` and compiled like the shipped ones), node
"new" runs the working tree's. The Python side (loader, applier) is the
working tree's for both; the maps' layouts are the same in both revisions.

On each node the client times back-to-back pairs of connect(): one to a
Service VIP (translated by the cgroup hooks, which file a nm_revnat_v1 entry
per socket) and one straight to the server pod IP (no entry). Each connection
closes with a reset at once (no TIME_WAIT, so the client never runs out of
ports), as a short-lived client would. The run goes in windows, alternating
between the nodes window by window (the order flips each window), so both see
the same background load; the old node's map fills up over the run (262,144
entries, after which every update evicts).

Then, with kernel.bpf_stats_enabled=1, the mean cost per run of each hook on
each node over a short pass. Run as root, on a quiet machine:

    .venv/bin/python -m bench.datapath_revnat [--connections 300000] [--window 25000]
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

VIP, PORT = "10.96.0.10", 8080
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
class Side:
    """One test node with its own datapath, built from one revision's programs."""

    def __init__(self, name: str, rev: str | None, src: Path) -> None:
        import tempfile

        from integration.datapath.node import MeshNode

        self.name = name
        self.rev = rev  # None: the working tree's programs
        self.src = src
        self.workdir = Path(tempfile.mkdtemp(prefix=f"nm-bench-revnat-{name}-"))
        self.node = MeshNode(self.workdir)

    def setup(self) -> None:
        self.node.setup()
        self.client = self.node.add_pod("default", "client")
        self.server = self.node.add_pod("default", "server")
        argv = [sys.executable, __file__, "--server", str(PORT)]
        proc = self.node.spawn(argv, self.server.cgroup, self.server.netns)
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        if line != "ready":
            raise SystemExit(f"the server did not start: {line!r}")

    def load(self) -> None:
        """A fresh datapath (empty maps) from this side's programs."""
        from integration.datapath.plans import frontend, plan
        from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
        from nodemesh.ebpf import applier, loader
        from nodemesh.ebpf.endpoints import DirectoryPodCgroups

        config = self.node.config()
        loader.cleanup(config)
        if self.rev is None:
            loader.load(config)
        else:
            from bench.old_datapath import load_revision

            load_revision(self.rev, config, self.src)
        fe = frontend(VIP, 80, pb.TCP, [(self.server.ip, PORT)], service="default/server")
        applier.apply(plan(fe), config.maps_dir, "10.0.0.1", DirectoryPodCgroups(self.node.mesh))

    def run(self, count: int, window: int) -> list[dict[str, float]]:
        argv = [sys.executable, __file__, "--client", self.server.ip, str(count), str(window)]
        proc = self.node.spawn(argv, self.client.cgroup, self.client.netns)
        out, _ = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"the client on {self.name} failed")
        windows: list[dict[str, float]] = json.loads(out)
        return windows

    def revnat_entries(self) -> int:
        from nodemesh.ebpf import pinned

        with pinned.open_map(self.node.config().maps_dir, pinned.REVNAT) as m:
            return sum(1 for _ in m.iter_keys())

    def links(self) -> list[str]:
        return sorted(p.name for p in self.node.config().links_dir.iterdir())

    def teardown(self) -> None:
        import shutil

        from nodemesh.ebpf import loader

        try:
            loader.cleanup(self.node.config())
        finally:
            self.node.teardown()
            shutil.rmtree(self.workdir, ignore_errors=True)


def _cells(w: dict[str, float]) -> str:
    gap = w["xl99"] - w["dr99"]
    return f"{w['xl50']:>7.1f}/{w['xl99']:<7.1f}{w['dr50']:>7.1f}/{w['dr99']:<7.1f}{gap:>+7.1f}"


def table(old: list[dict[str, float]], new: list[dict[str, float]], rev: str) -> list[str]:
    """µs per window: VIP p50/p99, direct p50/p99, and VIP p99 minus direct p99."""
    sub = f"{'VIP p50/p99':^15}{'direct p50/p99':^15}{'Δp99':>7}"
    rows = [f"{'':>9} | {'old (' + rev + ')':^37} | {'new (working tree)':^37}"]
    rows += [f"{'connects':>9} | {sub} | {sub}"]
    rows += ["-" * len(rows[1])]
    for a, b in zip(old, new, strict=True):
        rows.append(f"{int(a['upto']):>9} | {_cells(a)} | {_cells(b)}")
    return rows


def interleaved(sides: list[Side], count: int, window: int) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {s.name: [] for s in sides}
    done = 0
    while done < count:
        n = min(window, count - done)
        order = sides if (done // window) % 2 == 0 else sides[::-1]
        for side in order:
            (got,) = side.run(n, n)
            got["upto"] = done + n
            out[side.name].append(got)
        done += n
    return out


def hook_costs(sides: list[Side], count: int) -> list[str]:
    from bench.datapath_measure import bpf_stats, hook_counters, hook_delta

    rows = [f"mean ns per program run, {count} VIP + {count} direct connects on each node"]
    with bpf_stats():
        for side in sides:
            side.load()
            before = hook_counters([side.node.mesh])
            side.run(count, count)
            delta = hook_delta(before, hook_counters([side.node.mesh]))
            ran = sorted((p, r, ns) for p, (r, ns) in delta.items() if r)
            rows += [f"  {side.name:<4}{p:<18}{r:>8} runs {ns:>7.0f} ns" for p, r, ns in ran]
            if delta.get("nm_connect4", (0, 0.0))[0] != 2 * count:
                # The knob is machine-wide: another benchmark restoring it
                # mid-pass leaves counts short.
                rows.append(f"  {side.name}: stats were off for part of the pass; discard these")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300_000, help="pairs per node")
    parser.add_argument("--window", type=int, default=25_000)
    parser.add_argument("--old-rev", default="50d2725^", help="revision of the old programs")
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

    from bench.datapath_measure import wait_for_quiet

    src = Path(tempfile.mkdtemp(prefix="nm-bench-revnat-src-"))
    sides = [Side("old", args.old_rev, src), Side("new", None, src)]
    quiet = wait_for_quiet(args.max_load, args.wait_quiet)
    print(f"load before: {quiet:.2f} (limit {args.max_load}; {_uptime()})")
    try:
        for side in sides:
            side.setup()
            side.load()
            print(f"{side.name}: links {', '.join(side.links())}")
        got = interleaved(sides, args.connections, args.window)
        print("\n".join(table(got["old"], got["new"], args.old_rev)))
        left = ", ".join(f"{s.name} {s.revnat_entries()}" for s in sides)
        print(f"nm_revnat_v1 entries after the run: {left} (capacity 262144)")
        print()
        print("\n".join(hook_costs(sides, args.stats_connections)))
        print(f"load after: {_uptime()}")
    finally:
        for side in sides:
            side.teardown()
        import shutil

        shutil.rmtree(src, ignore_errors=True)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


if __name__ == "__main__":
    main()
