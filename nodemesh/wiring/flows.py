"""The agent's kernel flows: the datapath's event ring read on the event loop,
each event handed to the flow collector, kernel loss counted.

The ring is read on the agent's own event loop, so the collector stays
single-threaded: woken by the ring's epoll fd or a timer, it drains the ring
without blocking (`consume()`). The 256 KiB
ring holds about 2,300 events; bench/flows.py measures where loss starts.

`CgroupPods` tells the collector which pod made an event that has no source
address yet (connect() runs before the kernel picks one): the event carries
the process's cgroup id, and the datapath knows each local pod's cgroups.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from nodemesh.ebpf import events
from nodemesh.ebpf.endpoints import PodCgroups
from nodemesh.ebpf.errors import MapError
from nodemesh.ebpf.policy_apply import cgroup_ids
from nodemesh.flows.collector import FlowCollector
from nodemesh.model.snapshot import MeshModel

log = structlog.get_logger(__name__)


class CgroupPods:
    """Cgroup id -> pod "namespace/name" on this node, for the model's pods.

    Rebuilt when the model version changes, and on a miss at most once per
    `refresh_s` (a container started since; a miss is otherwise a process
    that is no pod, which must not walk the cgroup tree per event)."""

    def __init__(
        self,
        pods: PodCgroups,
        model: Callable[[], MeshModel | None],
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pods = pods
        self._model = model
        self._refresh_s = refresh_s
        self._clock = clock
        self._index: dict[int, str] = {}
        self._version: str | None = None
        self._built_at = float("-inf")

    def _rebuild(self, model: MeshModel) -> None:
        index: dict[int, str] = {}
        for pod in model.pods:
            key = f"{pod.ref.namespace}/{pod.ref.name}"
            for cgroup in cgroup_ids(self._pods, key):
                index[cgroup] = key
        self._index, self._version = index, model.version
        self._built_at = self._clock()

    def __call__(self, cgroup_id: int) -> str | None:
        model = self._model()
        if model is None:
            return None
        if model.version != self._version:
            self._rebuild(model)
        found = self._index.get(cgroup_id)
        if found is None and self._clock() - self._built_at >= self._refresh_s:
            self._rebuild(model)
            found = self._index.get(cgroup_id)
        return found


async def follow_kernel_events(
    maps_dir: Path, collector: FlowCollector, interval: float = 0.05
) -> None:
    """Until cancelled. The ring is the datapath's: without it (not loaded,
    an older datapath) there are no kernel flows, and the agent says so once.

    Woken by the ring (its epoll fd: the kernel wakes readers as the ring
    fills past each eighth, bpf/lib/events.h) or every `interval`, which
    delivers what stays below that mark and reads the loss counter."""
    try:
        reader = events.Reader(maps_dir, collector.kernel_event)
        # The loss counter is pinned with the ring and outlives agent
        # restarts: count only what is lost from now on.
        reported = events.lost(maps_dir)
    except MapError as exc:
        log.warning("kernel_flows_unavailable", error=str(exc))
        return
    loop = asyncio.get_running_loop()
    with reader:
        while True:
            await _readable(loop, reader.fileno(), interval)
            # A bounded drain per turn: the event loop's other work (xDS,
            # Observer streams) runs between turns.
            for _ in range(_POLLS_PER_TURN):
                if not reader.consume():
                    break
            lost = events.lost(maps_dir)
            if lost > reported:
                collector.lost_kernel(lost - reported)
                reported = lost


_POLLS_PER_TURN = 8


async def _readable(loop: asyncio.AbstractEventLoop, fd: int, timeout: float) -> None:
    """Until `fd` is readable or `timeout` passes."""
    ready: asyncio.Future[None] = loop.create_future()

    def fire() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, fire)
    try:
        await asyncio.wait_for(ready, timeout)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)
