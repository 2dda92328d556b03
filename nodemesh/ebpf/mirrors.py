"""ctypes mirrors of the BPF map key and value structs: exactly one per struct.

Each mirror names the C struct in `bpf/lib/common.h` it must match byte for
byte, spells out its padding as named fields, and marks network-order fields
with a `_be` suffix (they hold the raw big-endian value; use the `ip`/`port`
helpers). tests/ebpf/test_mirrors_btf.py compares every mirror against the
compiled object's BTF: names, offsets, sizes and total size.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from typing import ClassVar


def ip_be(address: str) -> int:
    """Dotted IPv4 -> the u32 whose memory holds it in network order."""
    return int.from_bytes(ipaddress.IPv4Address(address).packed, "little")


def ip_str(value_be: int) -> str:
    return str(ipaddress.IPv4Address(value_be.to_bytes(4, "little")))


def port_be(port: int) -> int:
    return socket.htons(port)


def port_host(value_be: int) -> int:
    return socket.ntohs(value_be)


class Mirror(ctypes.Structure):
    """Base: `C_STRUCT` names the struct in bpf/lib/common.h this mirrors."""

    C_STRUCT: ClassVar[str] = ""

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(_as_int(getattr(self, name)) for name, *_ in self._fields_)


def _as_int(value: object) -> int:
    # An IPv6 address field (__be32[4]) reads as a ctypes array: its bytes,
    # in memory (network) order, are the address's integer value.
    if isinstance(value, ctypes.Array):
        return int.from_bytes(bytes(value), "big")
    assert isinstance(value, int)
    return value


IP6 = ctypes.c_uint32 * 4


def ip6_int(address: str) -> int:
    """IPv6 text (or an IPv4-mapped one) -> the address as one integer."""
    return int(ipaddress.IPv6Address(address))


def ip6_words(value: int) -> ctypes.Array[ctypes.c_uint32]:
    """An address integer -> the __be32[4] a map key holds."""
    return IP6.from_buffer_copy(value.to_bytes(16, "big"))


def ip6_str(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


class ServiceKey(Mirror):
    C_STRUCT = "nm_service_key"
    _fields_ = (
        ("vip_be", ctypes.c_uint32),
        ("port_be", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("slot", ctypes.c_uint32),
    )


class ServiceValue(Mirror):
    C_STRUCT = "nm_service_value"
    _fields_ = (
        ("addr_be", ctypes.c_uint32),
        ("port_be", ctypes.c_uint16),
        ("count", ctypes.c_uint16),
    )


class L7RedirKey(Mirror):
    C_STRUCT = "nm_l7redir_key"
    _fields_ = (
        ("cgroup_id", ctypes.c_uint64),
        ("vip_be", ctypes.c_uint32),
        ("port_be", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    )


class L7RedirValue(Mirror):
    C_STRUCT = "nm_l7redir_value"
    _fields_ = (
        ("proxy_addr_be", ctypes.c_uint32),
        ("proxy_port_be", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    )


class RevNatKey(Mirror):
    C_STRUCT = "nm_revnat_key"
    _fields_ = (
        ("cookie", ctypes.c_uint64),
        ("addr_be", ctypes.c_uint32),
        ("port_be", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    )


class OrigDst(Mirror):
    C_STRUCT = "nm_origdst"
    _fields_ = (
        ("addr_be", ctypes.c_uint32),
        ("port_be", ctypes.c_uint16),
        ("proxy_port_be", ctypes.c_uint16),
    )


class OrigDstKey(Mirror):
    C_STRUCT = "nm_origdst_key"
    _fields_ = (
        ("client_addr_be", ctypes.c_uint32),
        ("client_port_be", ctypes.c_uint16),
        ("proxy_port_be", ctypes.c_uint16),
    )


class ServiceKey6(Mirror):
    C_STRUCT = "nm_service6_key"
    _fields_ = (
        ("vip_be", IP6),
        ("port_be", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("slot", ctypes.c_uint32),
    )


class ServiceValue6(Mirror):
    C_STRUCT = "nm_service6_value"
    _fields_ = (
        ("addr_be", IP6),
        ("port_be", ctypes.c_uint16),
        ("count", ctypes.c_uint16),
    )


class RevNatKey6(Mirror):
    C_STRUCT = "nm_revnat6_key"
    _fields_ = (
        ("cookie", ctypes.c_uint64),
        ("addr_be", IP6),
        ("port_be", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("pad2", ctypes.c_uint32),
    )


class OrigDst6(Mirror):
    C_STRUCT = "nm_origdst6"
    _fields_ = (
        ("addr_be", IP6),
        ("port_be", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    )


class Config(Mirror):
    C_STRUCT = "nm_config"
    _fields_ = (
        ("proxy_cgroup_id", ctypes.c_uint64),
        ("pods_cgroup_id", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    )


class U32(Mirror):
    """A bare __u32 key (array index); C_STRUCT empty: checked by size only."""

    _fields_ = (("value", ctypes.c_uint32),)

    def __init__(self, value: int = 0) -> None:
        super().__init__(value)


class U8(Mirror):
    """A bare __u8 value (a flag); checked by size only."""

    _fields_ = (("value", ctypes.c_uint8),)

    def __init__(self, value: int = 0) -> None:
        super().__init__(value)


class U64(Mirror):
    """A bare __u64 key (a socket cookie); checked by size only."""

    _fields_ = (("value", ctypes.c_uint64),)

    def __init__(self, value: int = 0) -> None:
        super().__init__(value)


# -- L3/L4 policy (bpf/lib/policy_maps.h) -----------------------------------


class IpcacheKey(Mirror):
    """LPM trie key: prefix length, then the address (network order)."""

    C_STRUCT = "nm_ipcache_key"
    _fields_ = (
        ("prefixlen", ctypes.c_uint32),
        ("addr_be", ctypes.c_uint32),
    )


class IdentityValue(Mirror):
    """nm_ipcache_v1 and nm_endpoints_v1 value."""

    C_STRUCT = "nm_identity_value"
    _fields_ = (
        ("identity", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    )


class PolicyKey(Mirror):
    """LPM trie key: 96 fixed bits (subject .. remote), then the port's leading bits."""

    C_STRUCT = "nm_policy_key"
    _fields_ = (
        ("prefixlen", ctypes.c_uint32),
        ("subject", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
        ("remote", ctypes.c_uint32),
        ("port_be", ctypes.c_uint16),
        ("pad2", ctypes.c_uint16),
    )


class PolicyValue(Mirror):
    C_STRUCT = "nm_policy_value"
    _fields_ = (
        ("policy_id", ctypes.c_uint32),
        ("verdict", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    )


class PolicyStats(Mirror):
    """One CPU's counters; the map is per-CPU (read with maps.read_percpu)."""

    C_STRUCT = "nm_policy_stats"
    _fields_ = (
        ("allowed", ctypes.c_uint64),
        ("denied", ctypes.c_uint64),
    )


class PolicyConfig(Mirror):
    C_STRUCT = "nm_policy_config"
    _fields_ = (
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    )


class EventsConfig(Mirror):
    """struct nm_events_config (bpf/lib/events.h)."""

    C_STRUCT = "nm_events_config"
    _fields_ = (
        ("flags", ctypes.c_uint32),
        ("sample_every", ctypes.c_uint32),
    )


ALL_MIRRORS: tuple[type[Mirror], ...] = (
    ServiceKey,
    ServiceValue,
    L7RedirKey,
    L7RedirValue,
    RevNatKey,
    OrigDst,
    OrigDstKey,
    Config,
    ServiceKey6,
    ServiceValue6,
    RevNatKey6,
    OrigDst6,
    IpcacheKey,
    IdentityValue,
    PolicyKey,
    PolicyValue,
    PolicyStats,
    PolicyConfig,
    EventsConfig,
)
