"""A gRPC call that fails under a stream is a transport event, not a fault.

When a client resets or leaves while a response is being written, gRPC fails
that write (ExecuteBatchError) before it cancels the handler. Seen once in CI
as an error-level `xds_stream_failed` for a proxyless client that had just
failed its call and exited. A real client cannot be made to hit that window
on demand, so this test has gRPC's own exception raised from the write (the
one double here); the server, channel and client are real.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import structlog

from nodemesh.xds.cache import CLUSTER
from nodemesh.xds.server.stream import AdsStream
from tests.xds.server.ads_harness import Harness, mesh, publish, wait_until


async def test_a_failed_write_ends_the_stream_with_a_warning(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_write(self: AdsStream, state: Any, payload: bytes) -> None:
        raise grpc.aio.InternalError("Failed 'execute_batch': (<grpc.CallError.ERROR: 1>,)")

    monkeypatch.setattr(AdsStream, "_write", failing_write)
    publish(harness.cache, "node-1", mesh(clusters=("a",)))
    with structlog.testing.capture_logs() as logs:
        client = await harness.sotw()
        await client.request(CLUSTER, [])
        await wait_until(lambda: any(e["event"] == "xds_stream_transport_error" for e in logs))
        await wait_until(lambda: not harness.server._streams)
        await client.close()
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    [event] = [e for e in logs if e["event"] == "xds_stream_transport_error"]
    assert event["log_level"] == "warning" and "execute_batch" in event["error"]
