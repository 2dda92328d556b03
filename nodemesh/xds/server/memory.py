"""Give memory back to the system after large streams close.

A stream's requests (resource names by the hundred thousand) are parsed by
gRPC and upb into buffers from the C allocator. glibc keeps freed heap
memory for reuse instead of returning it, so a burst of large streams left
the process at its peak RSS long after they closed. Once the streams' own
objects are freed (by reference count, see `AdsStream.run`), `malloc_trim`
hands the free heap pages back. It runs at most once per `interval`, after
a stream that held at least `min_names` names closed; elsewhere than glibc
it is a no-op.

glibc also raises its mmap threshold (up to 32 MiB) each time a large
mmapped block is freed, so after the first big request every later one (a
100,000-name request is a few MiB) comes from the heap instead, and the heap
stays fragmented after the stream closes. `fix_mmap_threshold` pins the
threshold (which turns that adjustment off), so large buffers are mmapped
and unmapped whole. Measured (docs/benchmarks.md, item 8): 10 streams of
100,000 names left 12.7 MiB of RSS behind; with the pinned threshold 7.5.
The rest is CPython's small-object arenas (1 MiB each): a few small objects
gRPC's call machinery allocates per call outlive the stream and pin one
arena each (tracemalloc: no nodemesh object outlives its stream).
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


M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold for this process (see the module
    docstring). False where it could not be set (not glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


class HeapTrimmer:
    def __init__(self, min_names: int = 10_000, interval: float = 1.0) -> None:
        self._trim = _load_trim()
        if self._trim is not None:
            fix_mmap_threshold()
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
