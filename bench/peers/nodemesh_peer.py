"""nodemesh's ADS server as a process of its own, with the same line protocol
as the go-control-plane peer (bench/peers/gcp/main.go), so the comparison
drives and measures both alike:

    load PATH  -> "ok <version> <parse s> <parse CPU-s>"   (publish to every node)
    acks TYPE  -> "<count>"        (ACKs recorded so far for a type URL)

Usage: python -m bench.peers.nodemesh_peer [--coalesce 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

import structlog

from bench.ads_fanout import acked
from bench.peers.export import load
from nodemesh.xds.cache import SnapshotCache
from nodemesh.xds.server import AdsServer, ServerSettings, StreamSettings
from nodemesh.xds.vocab import SHORT_NAMES


async def serve(coalesce: float) -> None:
    cache = SnapshotCache()
    settings = ServerSettings(
        tcp_address="127.0.0.1:0", stream=StreamSettings(coalesce_delay=coalesce)
    )
    server = AdsServer(cache, settings)
    await server.start()
    print(f"ready {server.tcp_port}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := (await reader.readline()).decode().strip():
            command, _, argument = line.partition(" ")
            if command == "load":
                # Parsing the export is not part of a push: report its wall
                # and CPU time so the harness can take it out.
                started, cpu = time.perf_counter(), time.process_time()
                version, resources = load(Path(argument))
                parsed, parsed_cpu = time.perf_counter() - started, time.process_time() - cpu
                cache.set_default_snapshot(cache.build_snapshot(resources, version))
                print(f"ok {version} {parsed:f} {parsed_cpu:f}", flush=True)
            elif command == "acks":
                # The server records on module-level metrics (nodemesh.xds.metrics);
                # this process serves one server, so the total is its own.
                print(int(acked(SHORT_NAMES.get(argument, argument))), flush=True)
            else:
                print(f"error unknown command {command!r}", flush=True)
    finally:
        await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--coalesce", type=float, default=0.1)
    args = parser.parse_args()
    # Logs go to stderr: stdout carries the line protocol.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    asyncio.run(serve(args.coalesce))


if __name__ == "__main__":
    main()
