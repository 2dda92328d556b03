"""A real ADS server in a process of its own, so a test can read its RSS
alone: prints its port, then serves until stdin closes."""

from __future__ import annotations

import asyncio
import logging
import sys

import structlog

from nodemesh.xds.cache import SnapshotCache
from nodemesh.xds.server import AdsServer, ServerSettings
from tests.xds.server.ads_harness import mesh


async def main() -> None:
    # stdout carries the port only; nobody reads logs from this pipe.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    cache = SnapshotCache()
    cache.set_default_snapshot(cache.build_snapshot(mesh(), "v1"))
    server = AdsServer(cache, ServerSettings(tcp_address="127.0.0.1:0"))
    await server.start()
    print(server.tcp_port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the test closes stdin
    await server.stop(0.5)


if __name__ == "__main__":
    asyncio.run(main())
