"""Give memory back to the system after large streams close.

A stream's requests (resource names by the hundred thousand) are parsed by
gRPC and upb into buffers from the C allocator. glibc keeps freed heap
memory for reuse instead of returning it, so a burst of large streams left
the process at its peak RSS long after they closed. Once the streams' own
objects are freed (by reference count, see `AdsStream.run`), `malloc_trim`
hands the free heap pages back. It runs at most once per `interval`, after
a stream that held at least `min_names` names closed; elsewhere than glibc
it is a no-op.

What stays after a burst of large streams closed (10 streams of 100,000
names: about 1 MiB per stream; docs/benchmarks.md, issue 10 item 8) is not
held by nodemesh: tracemalloc finds no Python object of ours outliving its
stream, and glibc's in-use bytes grow by under 1 MiB. It is CPython's
small-object arenas (1 MiB each, freed only when empty): about a dozen small
objects that gRPC's call machinery allocates per call outlive the call and
pin one arena each. `PYTHONMALLOC=malloc MALLOC_MMAP_THRESHOLD_=131072`
(glibc for every object, so `malloc_trim` returns free pages; large
buffers mmapped) took the remainder from about 7 % of the growth to about
1 % in one measured run; it is not set here (it costs every allocation, and
it must be set before the interpreter starts).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("nodemesh.xds.server")


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    result: Callable[[int], int] = trim
    return result


class HeapTrimmer:
    def __init__(self, min_names: int = 10_000, interval: float = 1.0) -> None:
        self._trim = _load_trim()
        self._min_names = min_names
        self._interval = interval
        self._scheduled = False
        self._last = 0.0

    def stream_closed(self, names: int) -> None:
        """A stream that subscribed to `names` names has been freed."""
        if self._trim is None or names < self._min_names or self._scheduled:
            return
        self._scheduled = True
        delay = max(0.0, self._last + self._interval - time.monotonic())
        # Later, not now: let the closing calls finish freeing their buffers.
        asyncio.get_running_loop().call_later(max(delay, 0.1), self._run)

    def _run(self) -> None:
        self._scheduled = False
        self._last = time.monotonic()
        if self._trim is not None:
            started = time.perf_counter()
            self._trim(0)
            log.debug("xds_heap_trimmed", seconds=round(time.perf_counter() - started, 4))
