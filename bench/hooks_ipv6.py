"""What the IPv6 sock_addr hooks cost per run, beside the IPv4 ones, in one run.

    sudo .venv/bin/python -m bench.hooks_ipv6 [--rounds 3] [--connects 2000]

One node of network namespaces (integration/datapath/node.py, IPv6 from
integration/datapath/node6.py): a client pod and a backend pod with an IPv4
and an IPv6 server. Cells, interleaved per round, each N connect()s closed
with RST: an IPv4 VIP and the backend's IPv4 address (AF_INET: connect4),
an IPv6 VIP and the backend's IPv6 address (AF_INET6: connect6), and the IPv4
VIP as ::ffff:a.b.c.d from an AF_INET6 socket (connect6, IPv4 map). Per cell:
the mean run_time_ns per run of each program that ran, from bpftool with
kernel.bpf_stats_enabled=1 (restored after; the stats add ~100 ns per run);
the median over rounds is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.datapath_measure import bpf_stats, hook_counters, hook_delta
from integration.datapath.node import PROBE, MeshNode
from integration.datapath.node6 import PROBE6, add_ipv6, enable_forwarding
from integration.datapath.plans import frontend, plan
from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, loader
from nodemesh.ebpf.endpoints import DirectoryPodCgroups

VIP4, VIP6 = "10.96.0.10", "fd00:96::10"


def _cells(b4: str, b6: str) -> dict[str, tuple[Path, str, int]]:
    return {
        "v4 VIP": (PROBE, VIP4, 80),
        "v4 not a VIP": (PROBE, b4, 8080),
        "v6 VIP": (PROBE6, VIP6, 80),
        "v6 not a VIP": (PROBE6, b6, 8081),
        "v4-mapped VIP": (PROBE6, f"::ffff:{VIP4}", 80),
    }


def _run(node: MeshNode, args: argparse.Namespace) -> list[str]:
    enable_forwarding(node)
    client, backend = node.add_pod("default", "client"), node.add_pod("default", "b1")
    add_ipv6(node, client)
    b6 = add_ipv6(node, backend)
    # Servers outside the mesh cgroup: only the client's hooks are counted.
    for server, listen in ((PROBE, "8080"), (PROBE6, "8081")):
        argv = [sys.executable, str(server), "tcp-server", listen, "b1"]
        srv = node.spawn(argv, None, backend.netns, stderr=subprocess.DEVNULL)
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
    config = node.config()
    loader.load(config)
    applier.apply(
        plan(
            frontend(VIP4, 80, pb.TCP, [(backend.ip, 8080)]),
            frontend(VIP6, 80, pb.TCP, [(b6, 8081)]),
        ),
        config.maps_dir,
        None,
        DirectoryPodCgroups(node.mesh),
    )
    cells = _cells(backend.ip, b6)
    samples: dict[str, dict[str, list[float]]] = {c: {} for c in cells}
    with bpf_stats():
        for _ in range(args.rounds):
            for cell, (probe, host, port) in cells.items():
                before = hook_counters([node.mesh])
                argv = [sys.executable, str(probe), "connect-bench", host, str(port)]
                proc = node.spawn([*argv, str(args.connects)], client.cgroup, client.netns)
                proc.communicate(timeout=300)
                assert proc.returncode == 0, f"{cell}: connect-bench failed"
                for prog, (runs, ns) in hook_delta(before, hook_counters([node.mesh])).items():
                    if runs >= args.connects:
                        samples[cell].setdefault(prog, []).append(ns)
    rows = [
        f"mean ns per program run, median of {args.rounds} rounds x {args.connects} connects"
        f" (load average {os.getloadavg()[0]:.1f})"
    ]
    for cell, progs in samples.items():
        cost = ", ".join(f"{p} {statistics.median(v):.0f}" for p, v in sorted(progs.items()))
        rows.append(f"  {cell:<16}{cost}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connects", type=int, default=2000)
    args = parser.parse_args()
    node = MeshNode(Path(tempfile.mkdtemp(prefix="nm-bench6-")))
    try:
        node.setup()
        rows = _run(node, args)
    finally:
        try:
            loader.cleanup(node.config())
        finally:
            node.teardown()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
