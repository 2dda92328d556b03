"""RSS of an ADS server process before, during and after SotW streams of
many names (issue 10, item 8), as shipped and with allocator settings, side
by side in one run.

    .venv/bin/python -m bench.stream_memory [--runs N]

Each variant starts `tests.xds.server.rss_server` in a fresh process with
its environment, opens 10 SotW streams of 100,000 EDS names each (as
`tests/xds/server/test_ads_memory.py` does), closes them, waits until the
server holds none, and reads VmRSS. "kept" is after minus baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
from pathlib import Path

import grpc

from nodemesh.xds.cache import ENDPOINT
from tests.xds.server.ads_harness import SotwClient
from tests.xds.server.test_ads_memory import STREAMS, _connected, _rss_kib, _subscribe

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}
VARIANTS: dict[str, dict[str, str]] = {
    "as shipped": {},
    "MALLOC_MMAP_THRESHOLD_=131072": THRESHOLD,
    "PYTHONMALLOC=malloc + that threshold": {**THRESHOLD, "PYTHONMALLOC": "malloc"},
}


async def _settle(channel: grpc.aio.Channel) -> None:
    for _ in range(600):
        if await _connected(channel) == 0:
            await asyncio.sleep(1.0)  # let closing streams' tasks finish
            return
        await asyncio.sleep(0.2)
    raise SystemExit("streams never closed")


async def measure(env: dict[str, str]) -> tuple[float, float, float]:
    """(baseline, peak, after) RSS in MiB for one server process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.xds.server.rss_server",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    try:
        assert proc.stdout is not None
        port = int(await proc.stdout.readline())
        options = [("grpc.max_send_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            warm = await SotwClient(channel, "warm").open()
            await warm.request(ENDPOINT, ["a"])
            await warm.recv()
            await warm.close()
            await _settle(channel)
            baseline = _rss_kib(proc.pid)
            clients = [await _subscribe(channel, i) for i in range(STREAMS)]
            peak = _rss_kib(proc.pid)
            for client in clients:
                await client.close()
            del clients
            await _settle(channel)
            after = _rss_kib(proc.pid)
        return baseline / 1024, peak / 1024, after / 1024
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.close()
        await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="runs per variant (means shown)")
    args = parser.parse_args()
    print(f"{'variant':40} {'baseline':>9} {'peak':>7} {'after':>7} {'kept':>6}  (MiB)")
    for name, env in VARIANTS.items():
        runs = [await measure(env) for _ in range(args.runs)]
        base, peak, after = (statistics.mean(r[i] for r in runs) for i in range(3))
        print(f"{name:40} {base:9.1f} {peak:7.1f} {after:7.1f} {after - base:6.1f}")


if __name__ == "__main__":
    asyncio.run(main())
