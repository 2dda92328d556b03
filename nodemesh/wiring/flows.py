"""The agent's kernel flows: the datapath's event ring read on the event loop,
each event handed to the flow collector, kernel loss counted.

The ring is polled without blocking (`poll(0)`) every `interval` seconds on
the agent's own event loop, so the collector stays single-threaded; one poll
drains what the 256 KiB ring holds (about 2,500 events).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from nodemesh.ebpf import events
from nodemesh.ebpf.errors import MapError
from nodemesh.flows.collector import FlowCollector

log = structlog.get_logger(__name__)


async def follow_kernel_events(
    maps_dir: Path, collector: FlowCollector, interval: float = 0.05
) -> None:
    """Until cancelled. The ring is the datapath's: without it (not loaded,
    an older datapath) there are no kernel flows, and the agent says so once."""
    try:
        reader = events.Reader(maps_dir, collector.kernel_event)
        # The loss counter is pinned with the ring and outlives agent
        # restarts: count only what is lost from now on.
        reported = events.lost(maps_dir)
    except MapError as exc:
        log.warning("kernel_flows_unavailable", error=str(exc))
        return
    with reader:
        while True:
            reader.poll(0)
            lost = events.lost(maps_dir)
            if lost > reported:
                collector.lost_kernel(lost - reported)
                reported = lost
            await asyncio.sleep(interval)
