"""Kernel events into the agent, for bench/flows.py: how fast the agent's
reader ingests them, and at what event rate the ring starts losing some.

The events come from a BPF program (bench/bpf/nm_event_pump.c) run with
BPF_PROG_TEST_RUN: it writes the datapath's own struct nm_event into the
datapath's own ring (the pinned nm_events_v1) through the same
nm_event_reserve() the socket hooks use, so the reader sees exactly what a
flood of connects would give it, at a rate the benchmark chooses.

    python -m bench.kernel_events pump MAPS_DIR RATE SECONDS   (the producer)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nodemesh.ebpf import build, events, libbpf
from nodemesh.ebpf.errors import LoadError
from nodemesh.flows.collector import CollectorOptions, FlowCollector
from nodemesh.wiring.flows import follow_kernel_events
from tests.support.flows import canary_model

SOURCE = Path(__file__).parent / "bpf" / "nm_event_pump.c"
INCLUDE = build.BPF_DIR  # lib/events.h, as the datapath's objects include it
CHUNK = 2000  # events per drain in the ingest measure: fits the 256 KiB ring


MAX_PER_RUN = 4096  # NM_PUMP_MAX


class _RunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf's bpf.h)."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


class _PumpArgs(ctypes.Structure):
    _fields_ = (("count", ctypes.c_uint32), ("seq", ctypes.c_uint32))


def _object() -> Path:
    """The pump compiled into the BPF cache, keyed by its source and events.h."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update((INCLUDE / "lib" / "events.h").read_bytes())
    digest.update((INCLUDE / "lib" / "common.h").read_bytes())
    out = build.cache_dir() / "bench" / f"nm_event_pump-{digest.hexdigest()[:16]}.o"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["clang", *build.cflags(), f"-I{INCLUDE}", "-c", str(SOURCE), "-o", str(out)]
        subprocess.run(cmd, check=True)
    return out


class Pump:
    """The pump program, its maps reusing the pins under `maps_dir` (created
    there if the datapath is not loaded)."""

    def __init__(self, maps_dir: Path) -> None:
        lib = libbpf.lib()
        lib.bpf_prog_test_run_opts.restype = ctypes.c_int
        lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_RunOpts)]
        obj = lib.bpf_object__open_file(str(_object()).encode(), None)
        if not obj or lib.libbpf_get_error(obj):
            raise LoadError(f"libbpf could not open {_object()}")
        self._obj = obj
        m = lib.bpf_object__next_map(obj, None)
        while m:
            name = lib.bpf_map__name(m).decode()
            if not name.startswith("."):
                lib.bpf_map__set_pin_path(m, str(maps_dir / name).encode())
            m = lib.bpf_object__next_map(obj, m)
        libbpf.check(lib.bpf_object__load(obj), "load nm_event_pump")
        self._fd = lib.bpf_program__fd(lib.bpf_object__next_program(obj, None))
        self._seq = 0

    def run(self, count: int) -> None:
        while count > MAX_PER_RUN:
            self.run(MAX_PER_RUN)
            count -= MAX_PER_RUN
        args = _PumpArgs(count=count, seq=self._seq)
        self._seq += count
        opts = _RunOpts(sz=ctypes.sizeof(_RunOpts))
        opts.ctx_in = ctypes.addressof(args)
        opts.ctx_size_in = ctypes.sizeof(args)
        ret = libbpf.lib().bpf_prog_test_run_opts(self._fd, ctypes.byref(opts))
        libbpf.check(ret, "BPF_PROG_TEST_RUN nm_event_pump")

    def close(self) -> None:
        libbpf.lib().bpf_object__close(self._obj)


@contextlib.contextmanager
def private_bpffs() -> Iterator[Path]:
    """A bpffs of its own (the pins go with it), as the test node has."""
    with tempfile.TemporaryDirectory(prefix="nm-bench-bpffs-") as tmp:
        subprocess.run(["mount", "-t", "bpf", "bpf", tmp], check=True)
        try:
            yield Path(tmp)
        finally:
            subprocess.run(["umount", tmp], check=False)


def collector() -> FlowCollector:
    """The agent's collector, enriching from the canary model; the pump's
    cgroup id 1 is the curl pod, as CgroupPods would say."""
    model = canary_model()
    flows = FlowCollector(CollectorOptions("bench"), lambda: model)
    flows.cgroup_pods = {1: "default/curl-1"}.get
    return flows


@dataclass(frozen=True)
class Ingest:
    events: int
    per_cpu_second: float
    per_wall_second: float
    lost: int


def ingest(maps_dir: Path, pump: Pump, total: int) -> Ingest:
    """The reader's rate: the pump fills CHUNK events, the agent's reader
    (events.Reader into the FlowCollector) drains them; only the draining
    is timed, on this thread's CPU clock and the wall clock."""
    flows = collector()
    before = events.lost(maps_dir)
    cpu = wall = 0.0
    with events.Reader(maps_dir, flows.kernel_event) as reader:
        for _ in range(total // CHUNK):
            pump.run(CHUNK)
            started, cpu_started = time.perf_counter(), time.thread_time()
            while reader.consume():
                pass
            cpu += time.thread_time() - cpu_started
            wall += time.perf_counter() - started
    assert flows.ring.seen == total, f"read {flows.ring.seen} of {total}"
    return Ingest(total, total / cpu, total / wall, events.lost(maps_dir) - before)


@dataclass(frozen=True)
class Offered:
    rate: int
    sent: int
    received: int
    lost: int


async def _agent_reads(maps_dir: Path, flows: FlowCollector, producer: asyncio.Task[None]) -> None:
    follow = asyncio.create_task(follow_kernel_events(maps_dir, flows))
    await producer
    await asyncio.sleep(0.5)  # the agent's next polls drain what is left
    follow.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follow


def offered(maps_dir: Path, rate: int, seconds: float) -> Offered:
    """The agent's own loop (wiring.flows.follow_kernel_events) reading
    while a separate process pumps `rate` events/s for `seconds`."""
    flows = collector()

    async def run() -> None:
        async def produce() -> None:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.kernel_events", "pump", str(maps_dir),
                str(rate), str(seconds),
            )  # fmt: skip
            await proc.wait()

        await _agent_reads(maps_dir, flows, asyncio.create_task(produce()))

    asyncio.run(run())
    sent = int(rate * seconds)
    return Offered(rate, sent, flows.ring.seen, flows.lost_kernel_events)


def _pump_main(maps_dir: Path, rate: int, seconds: float) -> None:
    """Producer: `rate` events/s, in bursts every millisecond, for `seconds`."""
    pump = Pump(maps_dir)
    total, sent = int(rate * seconds), 0
    started = time.perf_counter()
    while sent < total:
        due = min(total, int(rate * (time.perf_counter() - started)))
        if due > sent:
            pump.run(due - sent)
            sent = due
        time.sleep(0.001)
    pump.close()


if __name__ == "__main__" and sys.argv[1:2] == ["pump"]:
    _pump_main(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
