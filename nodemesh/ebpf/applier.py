"""Plan -> pinned maps, in an order that never leaves a VIP without backends.

For each frontend the applier writes new or moved backend slots first, then
the frontend's count; only then does it delete slots past the new count. A
removed frontend loses its frontend entry first and its slots after. L7
redirects are added after their frontend exists and removed before it goes.
IPv6 frontends go to nm_services6_v1 under the same rules; an IPv4 frontend
takes only IPv4 backends and an IPv6 one only IPv6 ones.

The starting point is always what is pinned, never an empty map: a restarted
agent that applies the same plan writes nothing. A plan that would overflow a
map, or that has a bad entry, is refused before the first write.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import pinned
from nodemesh.ebpf.endpoints import PodCgroups
from nodemesh.ebpf.errors import PlanError, PlanTooLarge
from nodemesh.ebpf.maps import PinnedMap
from nodemesh.ebpf.mirrors import (
    U8,
    U32,
    L7RedirKey,
    L7RedirValue,
    Mirror,
    ServiceKey,
    ServiceKey6,
    ServiceValue,
    ServiceValue6,
    ip6_int,
    ip6_words,
    ip_be,
    port_be,
)

log = structlog.get_logger("nodemesh.ebpf.applier")

IPPROTO: dict[int, int] = {pb.TCP: 6, pb.UDP: 17}
MAX_BACKENDS = 0xFFFF  # nm_service_value.count is a __u16
# Slot 0's `addr` flags (bpf/lib/common.h NM_FE_L7): some L7 redirect covers
# this frontend, so connect() looks for one; without it, it never does.
FE_L7 = 1

# (vip_be, port_be, proto) and (addr_be, port_be); an IPv6 address is its
# 128-bit integer (the mirrors' as_tuple form).
Frontend = tuple[int, int, int]
Addr = tuple[int, int]
# (cgroup_id, vip_be, port_be, proto)
L7Key = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class Desired:
    """The plan compiled to map terms."""

    frontends: dict[Frontend, list[Addr]]
    redirects: dict[L7Key, Addr]
    unresolved_clients: tuple[str, ...] = ()
    frontends6: dict[Frontend, list[Addr]] = field(default_factory=dict)


@dataclass
class ApplyResult:
    model_version: str
    writes: int = 0
    deletes: int = 0
    unresolved_clients: tuple[str, ...] = ()


def _ipv4(entry: str, field_name: str, value: str) -> int:
    try:
        return ip_be(str(ipaddress.IPv4Address(value)))
    except ValueError as exc:
        raise PlanError(f"{entry}: {field_name}: {value!r} is not an IPv4 address") from exc


def _family(entry: str, field_name: str, value: str) -> int:
    """4 or 6; an IPv4-mapped IPv6 address is refused: the kernel looks
    those up in the IPv4 map (a dual-stack socket reaching an IPv4 VIP)."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError as exc:
        raise PlanError(f"{entry}: {field_name}: {value!r} is not an IPv4 or IPv6 address") from exc
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        raise PlanError(f"{entry}: {field_name}: {value!r} is IPv4-mapped; use {ip.ipv4_mapped}")
    return ip.version


def _ip(entry: str, field_name: str, value: str, version: int) -> int:
    if _family(entry, field_name, value) != version:
        raise PlanError(f"{entry}: {field_name}: {value!r} is not an IPv{version} address")
    return _ipv4(entry, field_name, value) if version == 4 else ip6_int(value)


def _port(entry: str, field_name: str, value: int) -> int:
    if not 1 <= value <= 0xFFFF:
        raise PlanError(f"{entry}: {field_name}: {value} is not a port (1-65535)")
    return port_be(value)


def _proto(entry: str, value: int) -> int:
    if value not in IPPROTO:
        raise PlanError(f"{entry}: protocol: must be TCP or UDP, got {value}")
    return IPPROTO[value]


def _frontend(fe: pb.ServiceFrontend) -> tuple[int, Frontend, list[Addr]]:
    """(address family, key, backends): backends of the VIP's family only."""
    version = _family(fe.name, "vip", fe.vip)
    key = (
        _ip(fe.name, "vip", fe.vip, version),
        _port(fe.name, "port", fe.port),
        _proto(fe.name, fe.protocol),
    )
    if len(fe.backends) > MAX_BACKENDS:
        raise PlanError(f"{fe.name}: backends: {len(fe.backends)} exceeds {MAX_BACKENDS}")
    addrs: dict[Addr, None] = {}  # ordered and deduplicated
    for i, b in enumerate(fe.backends):
        where = f"backends[{i}]"
        addr = (
            _ip(fe.name, f"{where}.address", b.address, version),
            _port(fe.name, f"{where}.port", b.port),
        )
        addrs.setdefault(addr)
    return version, key, list(addrs)


def compile_plan(plan: pb.DatapathPlan, proxy_address: str | None, pods: PodCgroups) -> Desired:
    frontends: dict[Frontend, list[Addr]] = {}
    frontends6: dict[Frontend, list[Addr]] = {}
    for fe in plan.frontends:
        version, key, addrs = _frontend(fe)
        into = frontends if version == 4 else frontends6
        if key in into:
            raise PlanError(f"{fe.name}: vip/port/protocol: duplicates another frontend")
        into[key] = addrs
    redirects: dict[L7Key, Addr] = {}
    unresolved: list[str] = []
    for r in plan.redirects:
        if proxy_address is None:
            raise PlanError(f"{r.name}: the agent has no proxy address (--proxy-address)")
        if _family(r.name, "vip", r.vip) == 6:
            raise PlanError(f"{r.name}: vip: {r.vip!r}: IPv6 connections are not steered yet")
        fe_key = (
            _ipv4(r.name, "vip", r.vip),
            _port(r.name, "port", r.port),
            _proto(r.name, r.protocol),
        )
        if fe_key not in frontends:
            raise PlanError(f"{r.name}: frontend: {r.frontend!r} is not in the plan")
        target = (
            _ipv4(r.name, "proxy address", proxy_address),
            _port(r.name, "proxy_port", r.proxy_port),
        )
        cgroups: list[int] = [0] if r.all_clients else []
        for client in r.clients:
            cg = pods.cgroup_id(client.pod)
            if cg is None:
                unresolved.append(client.pod)  # not on this node (or not started yet)
            else:
                cgroups.append(cg)
        for cg in cgroups:
            redirects[(cg, *fe_key)] = target
    return Desired(frontends, redirects, tuple(sorted(set(unresolved))), frontends6)


# Which services map an op is for: "services" (IPv4) or "services6".
SERVICES6 = "services6"
SlotValue = ServiceValue | ServiceValue6


def _svc_key(fe: Frontend, slot: int, map_: str = "services") -> Mirror:
    if map_ == SERVICES6:
        return ServiceKey6(vip_be=ip6_words(fe[0]), port_be=fe[1], proto=fe[2], slot=slot)
    return ServiceKey(vip_be=fe[0], port_be=fe[1], proto=fe[2], slot=slot)


def _svc_value(map_: str, addr: Addr = (0, 0), count: int = 0) -> SlotValue:
    if map_ == SERVICES6:
        return ServiceValue6(addr_be=ip6_words(addr[0]), port_be=addr[1], count=count)
    return ServiceValue(addr_be=addr[0], port_be=addr[1], count=count)


def slot_addr(value: SlotValue) -> Addr:
    addr, port, _count = value.as_tuple()
    return addr, port


def read_services(m: PinnedMap[Mirror, Mirror]) -> dict[Frontend, dict[int, SlotValue]]:
    """Pinned services (either map), grouped: frontend -> slot -> value
    (slot 0 is the count)."""
    out: dict[Frontend, dict[int, SlotValue]] = {}
    for key, value in m.items().values():
        assert isinstance(key, ServiceKey | ServiceKey6)
        assert isinstance(value, ServiceValue | ServiceValue6)
        vip, port, proto, _pad, slot = key.as_tuple()
        out.setdefault((vip, port, proto), {})[slot] = value
    return out


def read_redirects(m: PinnedMap[Mirror, Mirror]) -> dict[L7Key, Addr]:
    out: dict[L7Key, Addr] = {}
    for key, value in m.items().values():
        assert isinstance(key, L7RedirKey) and isinstance(value, L7RedirValue)
        out[(key.cgroup_id, key.vip_be, key.port_be, key.proto)] = (
            value.proxy_addr_be,
            value.proxy_port_be,
        )
    return out


def _layout(current: list[Addr], desired: list[Addr]) -> list[Addr]:
    """New slot order: survivors keep their slot where it still exists, so
    connects in flight keep landing on the same backends."""
    m = len(desired)
    wanted = set(desired)
    layout: list[Addr | None] = [a if a in wanted else None for a in current[:m]]
    layout += [None] * (m - len(layout))
    placed = {a for a in layout if a is not None}
    rest = iter(a for a in desired if a not in placed)
    return [a if a is not None else next(rest) for a in layout]


@dataclass(frozen=True, slots=True)
class Op:
    map: str  # "services" or "l7"
    key: Mirror
    value: Mirror | None  # None: delete

    def __str__(self) -> str:
        verb = "del" if self.value is None else "put"
        return f"{verb} {self.map} {self.key.as_tuple()}"


def _fe_flags(value: SlotValue) -> int:
    """Slot 0's `addr` carries the frontend's flags (IPv4 only)."""
    return int(value.addr_be) if isinstance(value, ServiceValue) else 0


def _grow_ops(
    fe: Frontend,
    slots: dict[int, SlotValue],
    desired: list[Addr],
    m: str = "services",
    flags: int = 0,
) -> list[Op]:
    """Ops for a new or changed frontend, in the never-empty order. `flags`
    (FE_L7) go in slot 0 with the count, so they land before a new redirect
    of the frontend and are cleared before a removed one leaves."""
    count = int(slots[0].count) if 0 in slots else 0
    current = [slot_addr(slots[i]) if i in slots else (0, 0) for i in range(1, count + 1)]
    layout = _layout(current, desired)
    ops: list[Op] = []
    for i, addr in enumerate(layout, start=1):
        have = slots.get(i)
        if have is None or slot_addr(have) != addr:
            ops.append(Op(m, _svc_key(fe, i, m), _svc_value(m, addr)))
    if 0 not in slots or count != len(layout) or _fe_flags(slots[0]) != flags:
        head = _svc_value(m, (flags, 0), count=len(layout)) if m != SERVICES6 else None
        ops.append(Op(m, _svc_key(fe, 0, m), head or _svc_value(m, count=len(layout))))
    # Past the new count, including strays a crashed agent may have left.
    ops += [Op(m, _svc_key(fe, i, m), None) for i in sorted(slots) if i > len(layout)]
    return ops


def _remove_ops(fe: Frontend, slots: dict[int, SlotValue], m: str = "services") -> list[Op]:
    order = sorted(slots)  # slot 0, the frontend, goes first
    return [Op(m, _svc_key(fe, i, m), None) for i in order]


def _l7_op(key: L7Key, target: Addr | None) -> Op:
    k = L7RedirKey(cgroup_id=key[0], vip_be=key[1], port_be=key[2], proto=key[3])
    v = None if target is None else L7RedirValue(proxy_addr_be=target[0], proxy_port_be=target[1])
    return Op("l7", k, v)


def iter_ops(
    desired: Desired,
    services: dict[Frontend, dict[int, SlotValue]],
    redirects: dict[L7Key, Addr],
    services6: dict[Frontend, dict[int, SlotValue]] | None = None,
) -> Iterator[Op]:
    """Every write and delete, in order, that takes the pinned state to
    `desired`, one at a time: a large plan never holds all its ops in memory
    (55,000 of them, as mirrors, were ~20 MiB of peak agent RSS)."""
    have6 = services6 or {}
    steered = {key[1:] for key in desired.redirects}
    for fe in sorted(desired.frontends):
        flags = FE_L7 if fe in steered else 0
        yield from _grow_ops(fe, services.get(fe, {}), desired.frontends[fe], flags=flags)
    for fe in sorted(desired.frontends6):
        yield from _grow_ops(fe, have6.get(fe, {}), desired.frontends6[fe], SERVICES6)
    for key in sorted(desired.redirects):
        if redirects.get(key) != desired.redirects[key]:
            yield _l7_op(key, desired.redirects[key])
    for key in sorted(set(redirects) - set(desired.redirects)):
        yield _l7_op(key, None)
    for fe in sorted(set(services) - set(desired.frontends)):
        yield from _remove_ops(fe, services[fe])
    for fe in sorted(set(have6) - set(desired.frontends6)):
        yield from _remove_ops(fe, have6[fe], SERVICES6)


def plan_ops(
    desired: Desired,
    services: dict[Frontend, dict[int, SlotValue]],
    redirects: dict[L7Key, Addr],
    services6: dict[Frontend, dict[int, SlotValue]] | None = None,
) -> list[Op]:
    """`iter_ops` as a list (for tests and small plans)."""
    return list(iter_ops(desired, services, redirects, services6))


def _check_capacity(
    specs: dict[str, pinned.MapSpec], current: dict[str, set[tuple[int, ...]]], ops: Iterable[Op]
) -> None:
    """Refuse before the first write if any map would overflow. Peak
    occupancy: adds land before deletes, so deletes do not help; each key is
    written at most once per plan, so counting new keys is enough."""
    peak = {name: len(keys) for name, keys in current.items()}
    for op in ops:
        if op.value is not None and op.key.as_tuple() not in current[op.map]:
            peak[op.map] += 1
    for name, spec in specs.items():
        if peak[name] > spec.capacity:
            raise PlanTooLarge(
                f"{spec.name} would need {peak[name]} entries during the update but holds "
                f"{spec.capacity}; nothing was written"
            )


def _slot_keys(services: dict[Frontend, dict[int, SlotValue]], m: str) -> set[tuple[int, ...]]:
    return {_svc_key(fe, s, m).as_tuple() for fe, slots in services.items() for s in slots}


PORT_BACKEND = 1  # NM_PORT_BACKEND (bpf/lib/maps.h)
PORT_PROXY = 2  # NM_PORT_PROXY: sockops looks at accepted sockets only on these


def peer_ports(desired: Desired) -> dict[int, int]:
    """Host-order ports a translated or steered socket can have as its
    peer, with what uses each (PORT_* bits)."""
    out: dict[int, int] = {}
    for fes in (desired.frontends, desired.frontends6):
        for backends in fes.values():
            for _addr, port in backends:
                out[socket.ntohs(port)] = out.get(socket.ntohs(port), 0) | PORT_BACKEND
    for _addr, port in desired.redirects.values():
        out[socket.ntohs(port)] = out.get(socket.ntohs(port), 0) | PORT_PROXY
    return out


def _add_peer_ports(maps_dir: Path, desired: Desired) -> int:
    """Mark the plan's peer ports before any frontend can hand them out
    (never unmarked: sockets translated under an older plan keep theirs)."""
    writes = 0
    with pinned.open_map(maps_dir, pinned.PEER_PORTS) as ports:
        for port, bits in sorted(peer_ports(desired).items()):
            found = ports.lookup(U32(port))
            have = found.as_tuple()[0] if found is not None else 0
            if have | bits != have:
                ports.update(U32(port), U8(have | bits))
                writes += 1
    return writes


def apply(
    plan: pb.DatapathPlan,
    maps_dir: Path,
    proxy_address: str | None,
    pods: PodCgroups,
    hold_new_redirects: bool = False,
) -> ApplyResult:
    """Bring the pinned maps to `plan`, starting from what they hold now.

    `hold_new_redirects` is the first step of an update ordered against the
    node Envoy: only redirects that are both pinned and in the plan stay,
    with their pinned target, so nothing is steered to a listener Envoy may
    not have yet, and redirects that go away leave the kernel before Envoy
    drops their listener. Reading from the pins (not from the agent's memory)
    keeps this right across agent restarts.
    """
    desired = compile_plan(plan, proxy_address, pods)
    result = ApplyResult(plan.model_version, unresolved_clients=desired.unresolved_clients)
    with (
        pinned.open_map(maps_dir, pinned.SERVICES) as svc_map,
        pinned.open_map(maps_dir, pinned.SERVICES6) as svc6_map,
        pinned.open_map(maps_dir, pinned.L7REDIR) as l7_map,
    ):
        services = read_services(svc_map)
        services6 = read_services(svc6_map)
        redirects = read_redirects(l7_map)
        if hold_new_redirects:
            held = {k: redirects[k] for k in desired.redirects if k in redirects}
            desired = Desired(
                desired.frontends, held, desired.unresolved_clients, desired.frontends6
            )
        _check_capacity(
            {"services": pinned.SERVICES, SERVICES6: pinned.SERVICES6, "l7": pinned.L7REDIR},
            {
                "services": _slot_keys(services, "services"),
                SERVICES6: _slot_keys(services6, SERVICES6),
                "l7": {_l7_op(k, None).key.as_tuple() for k in redirects},
            },
            iter_ops(desired, services, redirects, services6),
        )
        maps = {"services": svc_map, SERVICES6: svc6_map, "l7": l7_map}
        result.writes += _add_peer_ports(maps_dir, desired)
        for op in iter_ops(desired, services, redirects, services6):
            target = maps[op.map]
            if op.value is None:
                target.delete(op.key)
                result.deletes += 1
            else:
                target.update(op.key, op.value)
                result.writes += 1
    log.info(
        "plan_applied",
        model_version=plan.model_version,
        writes=result.writes,
        deletes=result.deletes,
        unresolved_clients=list(result.unresolved_clients),
    )
    return result
