"""The kernel path with service events on and off, for bench/flows.py.

A test node (integration/datapath/node.py: network namespaces and cgroups,
no uplink) with a client pod, a server pod and a Service VIP translated by
the datapath. The client times socket()+connect() to the VIP (probe.py
connect-bench); rounds alternate events on and off, and a reader drains the
ring meanwhile (as the agent would, so the ring never fills and the "on"
rounds pay for every event). Then, with kernel.bpf_stats_enabled, the mean
run time of nm_connect4 itself, on and off.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.datapath_measure import bpf_stats, hook_counters, hook_delta
from integration.datapath.node import NODE_IP, PROBE, MeshNode, Pod
from integration.datapath.plans import frontend, plan
from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, events, loader
from nodemesh.ebpf.endpoints import DirectoryPodCgroups

VIP = "10.96.0.10"


@dataclass
class KernelPath:
    p99_us: dict[bool, float]  # events on -> p99 of every round's connects pooled
    p99_rounds: dict[bool, list[float]]  # each round's own p99
    hook_ns: dict[bool, float]  # events on -> mean ns per nm_connect4 run
    events_read: int


@contextmanager
def _node() -> Iterator[tuple[MeshNode, Pod]]:
    with tempfile.TemporaryDirectory(prefix="nm-bench-kpath-") as tmp:
        node = MeshNode(Path(tmp))
        try:
            node.setup()
            client, server = node.add_pod("default", "client"), node.add_pod("default", "server")
            node.server(server, "tcp-server", "8080", "server")
            config = node.config()
            loader.load(config)
            fe = frontend(VIP, 80, pb.TCP, [(server.ip, 8080)])
            applier.apply(plan(fe), config.maps_dir, NODE_IP, DirectoryPodCgroups(node.mesh))
            yield node, client
        finally:
            try:
                loader.cleanup(node.config())
            finally:
                node.teardown()


@contextmanager
def _draining(maps_dir: Path) -> Iterator[list[int]]:
    """A thread reading the ring as the agent does; yields [events read]."""
    count = [0]
    stop = threading.Event()

    def run() -> None:
        def seen(_event: events.DecodedEvent) -> None:
            count[0] += 1

        with events.Reader(maps_dir, seen) as reader:
            while not stop.is_set():
                reader.poll(20)

    thread = threading.Thread(target=run, name="ring-drain")
    thread.start()
    try:
        yield count
    finally:
        stop.set()
        thread.join()


def _connects(node: MeshNode, client: Pod, count: int) -> dict[str, Any]:
    argv = [sys.executable, str(PROBE), "connect-bench", VIP, "80", str(count)]
    proc = node.spawn(argv, client.cgroup, client.netns)
    out, _ = proc.communicate(timeout=600)
    stats: dict[str, Any] = json.loads(out)
    return stats


def _p99(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99)]


def measure(rounds: int, count: int) -> KernelPath:
    with _node() as (node, client):
        maps = node.config().maps_dir
        p99: dict[bool, list[float]] = {True: [], False: []}
        pooled: dict[bool, list[float]] = {True: [], False: []}
        hook_ns: dict[bool, float] = {}
        with _draining(maps) as read:
            _connects(node, client, count)  # warm-up, discarded
            for r in range(rounds):
                for on in (True, False) if r % 2 == 0 else (False, True):
                    events.set_service_events(maps, on)
                    got = _connects(node, client, count)
                    p99[on].append(got["p99"])
                    pooled[on] += got["samples"]
            with bpf_stats():
                for on in (False, True):
                    events.set_service_events(maps, on)
                    before = hook_counters([node.mesh])
                    _connects(node, client, count)
                    delta = hook_delta(before, hook_counters([node.mesh]))
                    hook_ns[on] = delta.get("nm_connect4", (0, 0.0))[1]
        return KernelPath({on: _p99(v) for on, v in pooled.items()}, p99, hook_ns, read[0])
