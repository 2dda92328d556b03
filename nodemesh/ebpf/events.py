"""The datapath's event ring (`nm_events_v1`, bpf/lib/events.h), read from Python.

One event layout for every kind of event (`Event.type`): policy verdicts,
service translation (VIP -> backend), L7 steering to the node Envoy and
zero-backend refusals. The service events are switched and sampled by
`set_service_events` (nm_events_config_v1); policy verdicts by
policy_apply.set_events_allowed.

`Reader` wraps libbpf's ring_buffer API (ring_buffer__new/poll/free) through
ctypes: `consume()` and `poll()` call the handler once per event, in order. A failed
reservation in the kernel is counted in `nm_events_lost_v1`; `lost()` sums it.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import time
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import Any, NamedTuple

from nodemesh.ebpf import libbpf, pinned
from nodemesh.ebpf.errors import MapError
from nodemesh.ebpf.mirrors import IP6, U32, U64, EventsConfig, Mirror, ip_str, port_host


class EventType(IntEnum):
    POLICY = 1
    TRANSLATION = 2
    L7_STEER = 3
    NO_BACKEND = 4


class Direction(IntEnum):
    INGRESS = 1
    EGRESS = 2


class Verdict(IntEnum):
    ALLOWED = 1
    DENIED = 2


class Reason(IntEnum):
    """nm_event.reason of a NO_BACKEND event (enum nm_event_reason)."""

    NO_BACKENDS = 1  # the Service has zero backends
    BACKEND_GONE = 2  # the picked backend went while the agent shrank the Service


SERVICE_EVENTS = 1  # NM_EVENTS_CFG_SERVICE


def set_service_events(maps_dir: Path, on: bool, sample_every: int = 1) -> None:
    """Report translation, steering and refusal events (`on`), keeping one
    translation or steering event in `sample_every` (refusals: all)."""
    if sample_every < 1:
        raise MapError(f"nm_events_config_v1: sample_every must be at least 1, got {sample_every}")
    with pinned.open_map(maps_dir, pinned.EVENTS_CONFIG) as m:
        flags = SERVICE_EVENTS if on else 0
        m.update(U32(0), EventsConfig(flags=flags, sample_every=sample_every))


class Event(Mirror):
    """struct nm_event; addresses are 16 bytes, IPv4 in the first word."""

    C_STRUCT = "nm_event"
    _fields_ = (
        ("timestamp_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("cookie", ctypes.c_uint64),
        ("saddr_be", IP6),
        ("daddr_be", IP6),
        ("orig_daddr_be", IP6),
        ("sport_be", ctypes.c_uint16),
        ("dport_be", ctypes.c_uint16),
        ("orig_dport_be", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("version", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("verdict", ctypes.c_uint8),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("policy_id", ctypes.c_uint32),
        ("reason", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    )


class DecodedEvent(NamedTuple):
    """An event in plain Python terms (addresses as text, ports in host order).

    A NamedTuple, not a dataclass: one is made per event, and the reader
    must keep up with the kernel (bench/flows.py: ingest rate)."""

    type: int
    timestamp_ns: int
    cgroup_id: int
    cookie: int
    saddr: str
    sport: int
    daddr: str
    dport: int
    orig_daddr: str
    orig_dport: int
    proto: int
    direction: int
    verdict: int
    src_identity: int
    dst_identity: int
    policy_id: int
    reason: int
    # Equal for events that differ only in time, socket and source port (the
    # record's bytes less those): the flow collector caches its flows by it.
    key: bytes = b""


def _addr(family: int, words: ctypes.Array[ctypes.c_uint32]) -> str:
    raw = bytes(words)
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ip_str(int(words[0]))


def decode(ev: Event) -> DecodedEvent:
    """One event from its ctypes mirror (the reference for `Decoder`)."""
    fam = int(ev.family)
    return DecodedEvent(
        type=int(ev.type),
        timestamp_ns=int(ev.timestamp_ns),
        cgroup_id=int(ev.cgroup_id),
        cookie=int(ev.cookie),
        saddr=_addr(fam, ev.saddr_be),
        sport=port_host(ev.sport_be),
        daddr=_addr(fam, ev.daddr_be),
        dport=port_host(ev.dport_be),
        orig_daddr=_addr(fam, ev.orig_daddr_be),
        orig_dport=port_host(ev.orig_dport_be),
        proto=int(ev.proto),
        direction=int(ev.direction),
        verdict=int(ev.verdict),
        src_identity=int(ev.src_identity),
        dst_identity=int(ev.dst_identity),
        policy_id=int(ev.policy_id),
        reason=int(ev.reason),
        key=_key(bytes(ev)),
    )


# struct nm_event for struct.unpack, the same layout as `Event` (which the
# BTF check holds to the C struct): timestamp, cgroup, cookie and the three
# addresses; the ports (network order, offset 72); the rest from offset 78.
_HEAD = struct.Struct("=QQQ16s16s16s")
_PORTS = struct.Struct("!HHH")
_TAIL = struct.Struct("=BBBBBBIIIII")
_TS_COOKIE = struct.Struct("=Q8xQ")
EVENT_SIZE = ctypes.sizeof(Event)
assert _HEAD.size + _PORTS.size + _TAIL.size == EVENT_SIZE


def _key(raw: bytes) -> bytes:
    """The record less timestamp (0:8), cookie (16:24) and source port (72:74)."""
    return raw[8:16] + raw[24:72] + raw[74:EVENT_SIZE]


class Decoder:
    """Raw nm_event records -> DecodedEvent, as `decode` does but about ten
    times faster: struct.unpack instead of ctypes fields, each address's text
    remembered, and an event alike but for time, cookie and source port to
    one seen before copied from it (a node sees few distinct ones; each
    memory is bounded by `max_addresses` entries, then starts over)."""

    def __init__(self, max_addresses: int = 65536) -> None:
        # One memory per family: an IPv4 record's 16 bytes could also be an
        # IPv6 address (10.0.0.1 and 0a00:1::).
        self._text: dict[int, dict[bytes, str]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
        self._max = max_addresses
        # Key -> the first event with it: decoded once, reused for the rest.
        self._events: dict[bytes, DecodedEvent] = {}

    def _addr(self, family: int, raw: bytes) -> str:
        known = self._text.get(family)
        if known is None:  # as `decode`: anything but IPv6 is IPv4
            family, known = socket.AF_INET, self._text[socket.AF_INET]
        text = known.get(raw)
        if text is None:
            if len(known) >= self._max:
                known.clear()
            text = socket.inet_ntop(family, raw if family == socket.AF_INET6 else raw[:4])
            known[raw] = text
        return text

    def __call__(self, raw: bytes) -> DecodedEvent:
        key = _key(raw)
        seen = self._events.get(key)
        if seen is not None:
            # Only time, cookie and source port differ from an event seen
            # before (every connect of one pod to one backend): no decoding.
            ts, cookie = _TS_COOKIE.unpack_from(raw)
            sport = raw[72] << 8 | raw[73]
            return _new_event((seen[0], ts, seen[2], cookie, seen[4], sport, *seen[6:]))
        event = self._decode(raw, key)
        if len(self._events) >= self._max:
            self._events.clear()
        self._events[key] = event
        return event

    def _decode(self, raw: bytes, key: bytes) -> DecodedEvent:
        ts, cgroup, cookie, s, d, o = _HEAD.unpack_from(raw)
        sport, dport, orig_dport = _PORTS.unpack_from(raw, 72)
        kind, _v, fam, proto, direction, verdict, sid, did, pid, reason, _p = _TAIL.unpack_from(
            raw, 78
        )
        addr = self._addr
        return DecodedEvent(
            kind, ts, cgroup, cookie, addr(fam, s), sport, addr(fam, d), dport,
            addr(fam, o), orig_dport, proto, direction, verdict, sid, did, pid, reason, key,
        )  # fmt: skip


def _new_event(fields: tuple[Any, ...]) -> DecodedEvent:
    """A DecodedEvent from its fields in order, without NamedTuple's keyword handling."""
    return tuple.__new__(DecodedEvent, fields)


_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


_declared: set[int] = set()


def _declare(lib: ctypes.CDLL) -> None:
    if id(lib) in _declared:
        return
    lib.ring_buffer__new.restype = ctypes.c_void_p
    lib.ring_buffer__new.argtypes = [ctypes.c_int, _SAMPLE_FN, ctypes.c_void_p, ctypes.c_void_p]
    lib.ring_buffer__poll.restype = ctypes.c_int
    lib.ring_buffer__poll.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.ring_buffer__consume.restype = ctypes.c_int
    lib.ring_buffer__consume.argtypes = [ctypes.c_void_p]
    lib.ring_buffer__epoll_fd.restype = ctypes.c_int
    lib.ring_buffer__epoll_fd.argtypes = [ctypes.c_void_p]
    lib.ring_buffer__free.restype = None
    lib.ring_buffer__free.argtypes = [ctypes.c_void_p]
    lib.libbpf_num_possible_cpus.restype = ctypes.c_int
    lib.libbpf_num_possible_cpus.argtypes = []
    _declared.add(id(lib))


class Reader:
    """Reads `<maps_dir>/nm_events_v1`. Not thread-safe; close() when done.

    `handler` gets each event decoded; an exception in it stops that poll and
    is raised from `poll()` (it is never swallowed in the C callback)."""

    def __init__(self, maps_dir: Path, handler: Callable[[DecodedEvent], None]) -> None:
        lib = libbpf.lib()
        _declare(lib)
        self._handler = handler
        self._decode = Decoder()
        self._error: BaseException | None = None
        self.maps_dir = maps_dir
        path = maps_dir / "nm_events_v1"
        self._fd = libbpf.check(lib.bpf_obj_get(str(path).encode()), f"open {path}", MapError)
        # Kept referenced: libbpf holds the raw pointer as long as the ring.
        self._callback = _SAMPLE_FN(self._on_sample)
        ring = lib.ring_buffer__new(self._fd, self._callback, None, None)
        if not ring:
            os.close(self._fd)
            raise MapError(f"ring_buffer__new on {path} failed")
        self._ring: int | None = ring

    def _on_sample(self, _ctx: int | None, data: int | None, size: int) -> int:
        if self._error is not None or data is None or size < EVENT_SIZE:
            return 0
        try:
            self._handler(self._decode(ctypes.string_at(data, EVENT_SIZE)))
        except BaseException as exc:  # re-raised from poll(), not lost in C
            self._error = exc
            return -1
        return 0

    def fileno(self) -> int:
        """An fd that is readable while events wait in the ring (libbpf's
        epoll fd), for an event loop to wait on instead of polling."""
        if self._ring is None:
            raise MapError("event reader is closed")
        fd: int = libbpf.lib().ring_buffer__epoll_fd(self._ring)
        return fd

    def consume(self) -> int:
        """Handle what is in the ring now, without waiting; events handled."""
        if self._ring is None:
            raise MapError("event reader is closed")
        got: int = libbpf.lib().ring_buffer__consume(self._ring)
        self._raise_pending()
        if got < 0 and got != -4:  # -EINTR: a signal, try again later
            libbpf.check(got, "consume nm_events_v1", MapError)
        return max(got, 0)

    def poll(self, timeout_ms: int = 100) -> int:
        """Handle what is in the ring, waiting up to `timeout_ms` for some;
        events handled. The kernel wakes readers only per batch (events.h),
        so the wait looks again every 10 ms rather than trusting a wakeup."""
        if self._ring is None:
            raise MapError("event reader is closed")
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            got = self.consume()
            left_ms = int((deadline - time.monotonic()) * 1000)
            if got or left_ms <= 0:
                return got
            # Returns early on a wakeup, having handled what woke it.
            polled: int = libbpf.lib().ring_buffer__poll(self._ring, min(10, left_ms))
            self._raise_pending()
            if polled > 0:
                return polled

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        if self._ring is not None:
            libbpf.lib().ring_buffer__free(self._ring)
            self._ring = None
            os.close(self._fd)

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def possible_cpus() -> int:
    lib = libbpf.lib()
    _declare(lib)
    count: int = lib.libbpf_num_possible_cpus()
    return max(1, count)


def read_percpu(fd: int, key: Mirror, value_type: type[Mirror]) -> list[Mirror]:
    """One value per possible CPU of a per-CPU map entry."""
    cpus = possible_cpus()
    # The kernel copies round_up(value_size, 8) bytes per CPU.
    stride = (ctypes.sizeof(value_type) + 7) // 8 * 8
    buf = ctypes.create_string_buffer(stride * cpus)
    ret = libbpf.lib().bpf_map_lookup_elem(fd, ctypes.byref(key), buf)
    libbpf.check(ret, f"per-CPU lookup {key.as_tuple()}", MapError)
    return [
        value_type.from_buffer_copy(buf.raw[i * stride : i * stride + ctypes.sizeof(value_type)])
        for i in range(cpus)
    ]


def lost(maps_dir: Path) -> int:
    """Events the kernel could not put in the ring (summed over CPUs)."""
    with pinned.open_map(maps_dir, pinned.EVENTS_LOST) as m:
        return sum(int(v.as_tuple()[0]) for v in read_percpu(m.fd, U32(0), U64))
