"""Flow pipeline benchmark: ingest rate, node-Envoy latency with ALS on/off,
agent RSS with a full ring and 100 followers. One run prints all three side
by side with their targets.

    .venv/bin/python -m bench.flows [--entries 200000] [--requests 2000]

- ingest: StreamAccessLogsMessages of 100 HTTP entries each (as Envoy batches
  them), decoded, enriched and put in a 4,096-flow ring by one thread on one
  core (the agent's event loop), with one follower reading. Target for
  kernel events is 200,000 events/s; kernel events are not decoded yet, so
  the ALS path is what this measures. Where loss starts: the ingest rate at
  which a follower that drains 1,024 flows per wakeup starts losing flows.
- p99: a real Envoy serving the canary, the same request loop with the
  translator's access log on and off (target on/off <= 1.10).
- RSS: a child process running the agent's FlowServer, ring filled (4,096),
  100 GetFlows followers connected from this process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import structlog

from integration.flow_rig import flow_rig
from nodemesh._gen.nodemesh.v1 import observer_pb2
from nodemesh.flows.collector import CollectorOptions, FlowCollector
from nodemesh.flows.ring import Lost
from tests.support.flows import als_message, canary_model, get_flows, http_entry, stream_access_logs

BATCH = 100


def ingest(entries: int) -> tuple[float, float, int]:
    """events/s through decode + enrich + ring (per wall second, and per CPU
    second of this one thread: the one-core rate however loaded the machine
    is), and flows a lagging follower lost."""
    model = canary_model()
    collector = FlowCollector(CollectorOptions("bench"), lambda: model)
    message = als_message(*(http_entry(path=f"/p/{n}") for n in range(BATCH)))
    batches = entries // BATCH
    lost = 0

    cpu = 0.0

    async def run() -> float:
        nonlocal lost, cpu
        with collector.ring.follow() as follower:
            started, cpu_started = time.perf_counter(), time.thread_time()
            for n in range(batches):
                collector.access_log_message(message)
                if n % 10 == 9:  # the follower drains every 1,000 events
                    while follower._items:
                        item = await follower.get()
                        if isinstance(item, Lost):
                            lost += item.count
            cpu = time.thread_time() - cpu_started
            return time.perf_counter() - started

    seconds = asyncio.run(run())
    return batches * BATCH / seconds, batches * BATCH / cpu, lost


async def _latencies(url: str, count: int) -> list[float]:
    out: list[float] = []
    connector = aiohttp.TCPConnector(force_close=True, limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.get(url, headers={"Host": "httpbin"}) as resp:
                await resp.read()
            out.append(time.perf_counter() - started)
    return out


async def envoy_p99(requests: int) -> dict[bool, float]:
    """p99 per ALS setting; rounds alternate on/off so drift hits both alike."""
    samples: dict[bool, list[float]] = {True: [], False: []}
    rigs = {}
    with tempfile.TemporaryDirectory() as on_dir, tempfile.TemporaryDirectory() as off_dir:
        async with flow_rig(Path(on_dir)) as on, flow_rig(Path(off_dir), access_log=False) as off:
            rigs = {True: on, False: off}
            for _ in range(4):
                for setting, rig in rigs.items():
                    samples[setting] += await _latencies(rig.url(), requests // 4)
    return {s: statistics.quantiles(v, n=100)[98] for s, v in samples.items()}


_CHILD = """
import asyncio, sys
from pathlib import Path
from nodemesh.flows.collector import CollectorOptions, FlowCollector
from nodemesh.flows.service import FlowServer, FlowServerSettings
from tests.support.flows import canary_model
async def main():
    model = canary_model()
    server = FlowServer(FlowCollector(CollectorOptions("rss"), lambda: model),
                        FlowServerSettings(Path(sys.argv[1]), "127.0.0.1:0"))
    await server.start()
    print(server.observer_target, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def agent_rss(followers: int = 100) -> tuple[int, int]:
    """(RSS idle, RSS with a full ring and `followers` followers), KiB."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "als.sock"
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CHILD, str(sock), stdout=asyncio.subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            target = (await child.stdout.readline()).decode().strip()
            idle = _rss_kib(child.pid)
            async with grpc.aio.insecure_channel(target) as channel:
                calls = [
                    get_flows(channel)(observer_pb2.GetFlowsRequest(follow=True))
                    for _ in range(followers)
                ]
                async with grpc.aio.insecure_channel(f"unix:{sock}") as als:

                    async def messages() -> AsyncIterator[bytes]:
                        for _ in range(5000 // BATCH):
                            yield als_message(*(http_entry(path=f"/p/{n}") for n in range(BATCH)))

                    await stream_access_logs(als)(messages())
                await asyncio.sleep(2)
                full = _rss_kib(child.pid)
                for call in calls:
                    call.cancel()
            return idle, full
        finally:
            child.terminate()
            await child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    load = os.getloadavg()
    rate, cpu_rate, lost = ingest(args.entries)
    p99 = asyncio.run(envoy_p99(args.requests))
    idle, full = asyncio.run(agent_rss())
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f}")
    print(f"{'measure':<44} {'value':>14} {'target':>14}")
    print(f"{'ALS ingest, wall clock (events/s)':<44} {rate:>14,.0f} {'-':>14}")
    print(f"{'ALS ingest, per CPU second (events/s)':<44} {cpu_rate:>14,.0f} {'>= 200,000':>14}")
    print(f"{'  lost by a follower draining per 1,000':<44} {lost:>14,} {'-':>14}")
    print(f"{'node-Envoy p99, ALS off (ms)':<44} {p99[False] * 1000:>14.2f} {'-':>14}")
    print(f"{'node-Envoy p99, ALS on (ms)':<44} {p99[True] * 1000:>14.2f} {'-':>14}")
    ratio = p99[True] / p99[False]
    print(f"{'  on / off':<44} {ratio:>14.2f} {'<= 1.10':>14}")
    print(f"{'agent RSS idle (MiB)':<44} {idle / 1024:>14.1f} {'-':>14}")
    print(f"{'agent RSS, full ring + 100 followers (MiB)':<44} {full / 1024:>14.1f} {'-':>14}")


if __name__ == "__main__":
    main()
