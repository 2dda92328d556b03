"""The pinned maps by name: which mirrors key and value each, and its size.

This mirrors `bpf/lib/maps.h`; tests/ebpf/test_mirrors_btf.py checks both the
struct layouts and these capacities against the compiled object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nodemesh.ebpf.maps import PinnedMap
from nodemesh.ebpf.mirrors import (
    U8,
    U32,
    U64,
    Config,
    EventsConfig,
    IdentityValue,
    IpcacheKey,
    L7RedirKey,
    L7RedirValue,
    Mirror,
    OrigDst,
    OrigDst6,
    OrigDstKey,
    PolicyConfig,
    PolicyKey,
    PolicyStats,
    PolicyValue,
    RevNatKey,
    RevNatKey6,
    ServiceKey,
    ServiceKey6,
    ServiceValue,
    ServiceValue6,
)


@dataclass(frozen=True, slots=True)
class MapSpec:
    name: str
    key: type[Mirror]
    value: type[Mirror]
    capacity: int


SERVICES = MapSpec("nm_services_v1", ServiceKey, ServiceValue, 65536)
L7REDIR = MapSpec("nm_l7redir_v1", L7RedirKey, L7RedirValue, 16384)
REVNAT = MapSpec("nm_revnat_v1", RevNatKey, OrigDst, 262144)
REDIR = MapSpec("nm_redir_v1", U64, OrigDst, 65536)
ORIGDST = MapSpec("nm_origdst_v1", OrigDstKey, OrigDst, 65536)
CONFIG = MapSpec("nm_config_v2", U32, Config, 1)
# cgroup id -> flags: every node Envoy pod of a rollout (proxy_follow).
PROXIES = MapSpec("nm_proxies_v1", U64, U32, 64)

# IPv6 (bpf/lib/maps6.h): the same roles with 16-byte addresses.
SERVICES6 = MapSpec("nm_services6_v1", ServiceKey6, ServiceValue6, 65536)
REVNAT6 = MapSpec("nm_revnat6_v1", RevNatKey6, OrigDst6, 262144)

# L3/L4 policy (bpf/lib/policy_maps.h).
IPCACHE = MapSpec("nm_ipcache_v1", IpcacheKey, IdentityValue, 65536)
ENDPOINTS = MapSpec("nm_endpoints_v1", U64, IdentityValue, 16384)
POLICY = MapSpec("nm_policy_v1", PolicyKey, PolicyValue, 131072)
# Per-CPU: one PolicyStats per possible CPU per policy id.
POLICY_STATS = MapSpec("nm_policy_stats_v1", U32, PolicyStats, 16384)
POLICY_CONFIG = MapSpec("nm_policy_config_v1", U32, PolicyConfig, 1)
UDP_PEERS = MapSpec("nm_udp_peers_v1", RevNatKey, U32, 65536)
EVENTS_LOST = MapSpec("nm_events_lost_v1", U32, U64, 1)
# Which service events (translation, steering, refusal) the kernel reports.
EVENTS_CONFIG = MapSpec("nm_events_config_v1", U32, EventsConfig, 1)
# Port (host order) -> nonzero if a backend or proxy uses it (only grows).
PEER_PORTS = MapSpec("nm_peer_ports_v1", U32, U8, 65536)

ALL_MAPS = (
    SERVICES,
    L7REDIR,
    REVNAT,
    REDIR,
    ORIGDST,
    CONFIG,
    PROXIES,
    SERVICES6,
    REVNAT6,
    IPCACHE,
    ENDPOINTS,
    POLICY,
    POLICY_STATS,
    POLICY_CONFIG,
    UDP_PEERS,
    EVENTS_LOST,
    EVENTS_CONFIG,
    PEER_PORTS,
)
# The event ring (bpf/lib/events.h): no key or value, read with events.Reader.
EVENTS = "nm_events_v1"


def open_map(maps_dir: Path, spec: MapSpec) -> PinnedMap[Mirror, Mirror]:
    return PinnedMap(maps_dir / spec.name, spec.key, spec.value, spec.capacity)
