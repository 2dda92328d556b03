from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from nodemesh.xds.cache import SnapshotCache
from nodemesh.xds.server import AdsServer, ServerSettings, StreamSettings
from tests.xds.server.ads_harness import Harness, MakeHarness, baseline


@pytest.fixture
async def make_harness() -> AsyncIterator[MakeHarness]:
    """Start a real server with the given StreamSettings overrides."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**stream: Any) -> Harness:
            stream.setdefault("coalesce_delay", 0.02)
            cache = SnapshotCache()
            settings = ServerSettings(tcp_address="127.0.0.1:0", stream=StreamSettings(**stream))
            server = AdsServer(cache, settings)
            await server.start()
            stack.push_async_callback(server.stop, 1.0)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.tcp_port}")
            stack.push_async_callback(channel.close)
            return Harness(cache, server, channel, REGISTRY, baseline(REGISTRY))

        yield make


@pytest.fixture
async def harness(make_harness: MakeHarness) -> Harness:
    return await make_harness()


@pytest.fixture(params=["sotw", "delta"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)
