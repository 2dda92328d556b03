"""A burst of new streams is served whole (issue 11 §3).

grpc.aio asks gRPC core for one incoming call at a time, so streams that
arrive faster than the event loop takes them wait in core's pending queue.
With core's defaults, past 1,000 queued calls it dropped them at random
(all past 3,000), silently: the client saw CANCELLED, or INTERNAL on its
next write, and the server logged nothing. At 10,000 streams nodemesh never
finished its initial sync because of it.

The test makes the burst certain rather than a race: it holds the server's
event loop (a blocking read of the client's pipe) until the client has sent
the first request of every stream, so all of them queue in core at once.
With core's defaults about 60 of 1,500 streams were dropped.
"""

from __future__ import annotations

import asyncio
import select
import subprocess
import sys
from pathlib import Path

from nodemesh.xds.cache import SnapshotCache
from nodemesh.xds.server import AdsServer, ServerSettings
from tests.xds.server.ads_harness import mesh

STREAMS = 1_500  # > core's default soft limit of 1,000 queued calls
CHANNELS = 8
ROOT = Path(__file__).parents[3]  # the repository root: `tests` is a package


def _read_line_blocking(proc: subprocess.Popen[str], timeout: float) -> str:
    """Read one line from the client while holding the event loop."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"client sent nothing within {timeout:g}s"
    return proc.stdout.readline().strip()


async def test_burst_of_new_streams_is_not_dropped() -> None:
    cache = SnapshotCache()
    cache.set_default_snapshot(cache.build_snapshot(mesh(), "v1"))
    server = AdsServer(cache, ServerSettings(tcp_address="127.0.0.1:0"))
    await server.start()
    client = "tests.xds.server.burst_client"
    # A blocking Popen: the event loop is to be held anyway (below).
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", client, str(server.tcp_port), str(STREAMS), str(CHANNELS)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        # Blocking on purpose: no call is taken from core until every
        # stream's first request has been sent.
        assert _read_line_blocking(proc, 120) == "sent"
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, _read_line_blocking, proc, 240)
        assert result == f"ok {STREAMS} failed 0", result
    finally:
        proc.kill()
        proc.wait()
        await server.stop(0.5)
