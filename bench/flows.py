"""Flow pipeline benchmark: ingest rates (kernel events and ALS), the kernel
path with service events on/off, node-Envoy latency with ALS on/off, agent
RSS with a full ring and 100 followers. One run prints them side by side
with their targets. Run as root (the kernel parts load BPF in a test-made
netns and a private bpffs):

    .venv/bin/python -m bench.flows [--entries 200000] [--requests 2000]
        [--kernel-events 200000] [--rates 10000,25000,50000,100000,200000]
        [--connects 2000 --rounds 6] [--only kernel|als]

- kernel ingest (bench/kernel_events.py): a BPF program run with
  BPF_PROG_TEST_RUN writes the datapath's own struct nm_event into the
  datapath's own ring; the agent's reader (events.Reader -> FlowCollector,
  enriched from the canary model) drains it on this thread. Target 200,000
  events/s on one core (per CPU second of the reader). Where loss starts:
  a separate process pumps events at each offered rate for a few seconds
  while the agent's own loop (wiring.flows.follow_kernel_events) reads;
  received + lost = sent, exactly.
- kernel path (bench/kernel_path.py): connect() p99 to a translated VIP
  with service events on and off, rounds alternating, every round's
  connects pooled per setting (target on/off <= 1.05; each round's own
  ratio too), and nm_connect4's mean run time from kernel.bpf_stats_enabled.
- ALS ingest: StreamAccessLogsMessages of 100 HTTP entries each (as Envoy
  batches them), decoded, enriched and put in a 4,096-flow ring by one
  thread on one core (the agent's event loop), with one follower reading;
  the follower's loss when it drains 1,000 flows per wakeup.
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


def _kernel_rows(args: argparse.Namespace) -> list[str]:
    from bench import kernel_events, kernel_path

    with kernel_events.private_bpffs() as fs:
        maps = fs / "maps"
        maps.mkdir()
        pump = kernel_events.Pump(maps)
        rate = kernel_events.ingest(maps, pump, args.kernel_events)
        pump.close()
        offered = [kernel_events.offered(maps, r, args.seconds) for r in args.rates]
    path = kernel_path.measure(args.rounds, args.connects)
    onset = next((o.rate for o in offered if o.lost), None)
    rows = [
        _row(
            "kernel ingest, per CPU second (events/s)", f"{rate.per_cpu_second:,.0f}", ">= 200,000"
        ),
        _row("kernel ingest, wall clock (events/s)", f"{rate.per_wall_second:,.0f}", "-"),
    ]
    for o in offered:
        shown = f"{o.received:,} read, {o.lost:,} lost"
        rows.append(_row(f"  offered {o.rate:,}/s for {args.seconds:g} s", shown, "-"))
    shown = f"{onset:,}/s" if onset else f"none up to {max(args.rates):,}/s"
    rows.append(_row("  loss starts at (offered events/s)", shown, "-"))
    for on in (False, True):
        label = "on" if on else "off"
        rows.append(
            _row(f"connect() p99 to a VIP, events {label} (us)", f"{path.p99_us[on]:.0f}", "-")
        )
    rounds = ", ".join(
        f"{a / b:.2f}" for a, b in zip(path.p99_rounds[True], path.p99_rounds[False], strict=True)
    )
    ratio = path.p99_us[True] / path.p99_us[False]
    rows.append(_row("  on / off (p99 of all rounds pooled)", f"{ratio:.2f}", "<= 1.05"))
    rows.append(_row("  on / off per round", rounds, "-"))
    for on in (False, True):
        label = "on" if on else "off"
        rows.append(
            _row(f"nm_connect4 mean run, events {label} (ns)", f"{path.hook_ns[on]:.0f}", "-")
        )
    return rows


def _als_rows(args: argparse.Namespace) -> list[str]:
    rate, cpu_rate, lost = ingest(args.entries)
    p99 = asyncio.run(envoy_p99(args.requests))
    idle, full = asyncio.run(agent_rss())
    ratio = p99[True] / p99[False]
    return [
        _row("ALS ingest, wall clock (events/s)", f"{rate:,.0f}", "-"),
        _row("ALS ingest, per CPU second (events/s)", f"{cpu_rate:,.0f}", "-"),
        _row("  lost by a follower draining per 1,000", f"{lost:,}", "-"),
        _row("node-Envoy p99, ALS off (ms)", f"{p99[False] * 1000:.2f}", "-"),
        _row("node-Envoy p99, ALS on (ms)", f"{p99[True] * 1000:.2f}", "-"),
        _row("  on / off", f"{ratio:.2f}", "<= 1.10"),
        _row("agent RSS idle (MiB)", f"{idle / 1024:.1f}", "-"),
        _row("agent RSS, full ring + 100 followers (MiB)", f"{full / 1024:.1f}", "-"),
    ]


def _row(measure: str, value: str, target: str) -> str:
    return f"{measure:<46} {value:>28} {target:>12}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--kernel-events", type=int, default=200_000)
    parser.add_argument(
        "--rates",
        type=lambda text: [int(r) for r in text.split(",")],
        default=[10_000, 25_000, 50_000, 100_000, 200_000],
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="per offered rate")
    parser.add_argument("--connects", type=int, default=2000, help="per kernel-path round")
    parser.add_argument("--rounds", type=int, default=6, help="kernel-path rounds (on and off)")
    parser.add_argument("--only", choices=["kernel", "als"])
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    load = os.getloadavg()
    rows = [] if args.only == "als" else _kernel_rows(args)
    rows += [] if args.only == "kernel" else _als_rows(args)
    after = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, shared; load average {load[0]:.1f} / {load[1]:.1f} "
        f"before, {after[0]:.1f} after"
    )
    print(_row("measure", "value", "target"))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
