"""Policy plan -> pinned maps, in an order that never enforces half a plan.

Order of one update (each step only what differs from the pins):

1. ipcache entries added or changed: identities exist before anything
   refers to them;
2. policy entries added or changed;
3. endpoints (cgroup id -> identity, flags) added or changed: a pod starts
   enforcing only once its policy entries are in;
4. policy entries deleted, then endpoints, then ipcache entries.

The starting point is what is pinned, so a restarted agent with the same
model writes nothing, and the pinned maps keep enforcing while no agent
runs. A plan that would overflow a map is refused before the first write.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from nodemesh.ebpf import pinned
from nodemesh.ebpf.endpoints import PodCgroups
from nodemesh.ebpf.errors import PlanTooLarge
from nodemesh.ebpf.maps import PinnedMap
from nodemesh.ebpf.mirrors import (
    U32,
    IpcacheKey,
    Mirror,
    PolicyConfig,
    PolicyKey,
    ip_be,
    port_be,
)
from nodemesh.ebpf.policy_plan import EntryKey, EntryValue, PolicyPlan

log = structlog.get_logger("nodemesh.ebpf.policy")

FIXED_BITS = 96
EVENTS_ALLOWED = 1


@dataclass
class PolicyApplyResult:
    model_version: str
    writes: int = 0
    deletes: int = 0
    endpoints: int = 0
    unresolved: tuple[str, ...] = ()


# Map name -> key -> value, both as their mirrors' `as_tuple()`: what is
# pinned and what a plan wants, compared without building a ctypes struct
# per entry (only the entries that change get one).
State = dict[str, dict[tuple[int, ...], tuple[int, ...]]]
MAPS = ("ipcache", "policy", "endpoints")


@dataclass(frozen=True, slots=True)
class _Op:
    map: str
    key: tuple[int, ...]
    value: tuple[int, ...] | None

    def __str__(self) -> str:
        verb = "del" if self.value is None else "put"
        return f"{verb} {self.map} {self.key}"


def ipcache_key(prefix: str) -> IpcacheKey:
    net = ipaddress.IPv4Network(prefix)
    return IpcacheKey(prefixlen=net.prefixlen, addr_be=ip_be(str(net.network_address)))


# Prefix text -> IpcacheKey tuple. Parsing a prefix is the dearest step of
# a plan's ipcache (microseconds each), and pod IPs change rarely.
_PREFIXES: dict[str, tuple[int, ...]] = {}


def _ipcache_tuple(prefix: str) -> tuple[int, ...]:
    found = _PREFIXES.get(prefix)
    if found is None:
        if len(_PREFIXES) > 4 * pinned.IPCACHE.capacity:
            _PREFIXES.clear()
        found = _PREFIXES[prefix] = ipcache_key(prefix).as_tuple()
    return found


def policy_key(key: tuple[int, int, int, int, int, int]) -> PolicyKey:
    return PolicyKey(*_policy_tuple(key))


def _policy_tuple(key: tuple[int, int, int, int, int, int]) -> tuple[int, ...]:
    """PolicyKey's fields in order (pads 0): prefixlen, subject, direction,
    proto, pad, remote, port (network order), pad2."""
    subject, direction, proto, remote, port, bits = key
    return (FIXED_BITS + bits, subject, direction, proto, 0, remote, port_be(port), 0)


def cgroup_ids(pods: PodCgroups, pod: str) -> list[int]:
    """The pod's cgroup and every cgroup below it (a kubelet's containers)."""
    top = pods.cgroup_id(pod)
    if top is None:
        return []
    path_of = getattr(pods, "path_of", None)
    if path_of is None:
        return [top]
    out = [top]
    for root, dirs, _files in os.walk(path_of(pod)):
        for d in dirs:
            try:
                out.append(os.stat(os.path.join(root, d)).st_ino)
            except FileNotFoundError:
                continue  # a container that just went
    return out


def desired(
    plan: PolicyPlan, pods: PodCgroups, policy: dict[tuple[int, ...], tuple[int, ...]] | None = None
) -> tuple[State, list[str]]:
    """What the maps should hold for `plan`, and the endpoints with no cgroup
    here. `policy`: the state of `plan.entries`, if already known."""
    ipc: dict[tuple[int, ...], tuple[int, ...]] = {
        _ipcache_tuple(prefix): value for prefix, value in plan.ipcache.items()
    }
    pol = _policy_state(plan.entries) if policy is None else policy
    eps: dict[tuple[int, ...], tuple[int, ...]] = {}
    unresolved = []
    for name, ep in plan.endpoints.items():
        ids = cgroup_ids(pods, name)
        if not ids:
            unresolved.append(name)
        for cg in ids:
            eps[(cg,)] = (ep.identity, ep.flags)
    return {"ipcache": ipc, "policy": pol, "endpoints": eps}, unresolved


def _policy_state(entries: dict[EntryKey, EntryValue]) -> dict[tuple[int, ...], tuple[int, ...]]:
    # PolicyValue: policy id, verdict, pad.
    return {_policy_tuple(k): (pid, verdict, 0) for k, (verdict, pid) in entries.items()}


def iter_ops(want: State, have: State) -> Iterator[_Op]:
    for name in MAPS:
        here = have[name]
        changed = [kt for kt, v in want[name].items() if here.get(kt) != v]
        for kt in sorted(changed):
            yield _Op(name, kt, want[name][kt])
    for name in ("policy", "endpoints", "ipcache"):
        for kt in sorted(set(have[name]) - set(want[name])):
            yield _Op(name, kt, None)


SPECS = {"ipcache": pinned.IPCACHE, "policy": pinned.POLICY, "endpoints": pinned.ENDPOINTS}


def check_capacity(want: State, have: State) -> None:
    """Adds land before deletes: the peak is what is pinned plus what is new."""
    for name, spec in SPECS.items():
        here = have[name]
        peak = len(here) + sum(1 for kt in want[name] if kt not in here)
        if peak > spec.capacity:
            raise PlanTooLarge(
                f"{spec.name} would need {peak} entries during the update but holds "
                f"{spec.capacity}; nothing was written"
            )
    if len(want["policy"]) and max(v[0] for v in want["policy"].values()) >= (
        pinned.POLICY_STATS.capacity
    ):
        raise PlanTooLarge(
            f"more than {pinned.POLICY_STATS.capacity - 1} policies; nothing was written"
        )


def _mirror(cls: type[Mirror], values: tuple[int, ...]) -> Mirror:
    """A mirror from its `as_tuple()` (array fields, pads only, stay zero)."""
    out = cls()
    for (field_name, ctype, *_), value in zip(cls._fields_, values, strict=True):
        if not issubclass(ctype, ctypes.Array):
            setattr(out, field_name, value)
    return out


@dataclass
class _Applied:
    """What this process last wrote to one pin directory's policy maps, so
    the next plan is diffed in memory instead of against a read of every
    pinned entry (a syscall or two each). Valid while the maps are the same
    kernel objects (their ids) and nothing else writes them: the agent is
    their only writer; a restarted agent starts from the pins again."""

    map_ids: tuple[int, ...]
    state: State
    entries: dict[EntryKey, EntryValue]  # the plan's, whose state is state["policy"]


_APPLIED: dict[Path, _Applied] = {}


def _want(plan: PolicyPlan, pods: PodCgroups, last: _Applied | None) -> tuple[State, list[str]]:
    # The compiler hands back the same entries object when nothing they
    # depend on changed (policy_plan.Compiler): their state is reused.
    if last is not None and plan.entries is last.entries:
        return desired(plan, pods, last.state["policy"])
    return desired(plan, pods)


def apply(plan: PolicyPlan, maps_dir: Path, pods: PodCgroups) -> PolicyApplyResult:
    """Bring the pinned policy maps to `plan`, starting from what they hold
    (what this process last wrote there, if those maps are still pinned)."""
    result = PolicyApplyResult(plan.model_version)
    with (
        pinned.open_map(maps_dir, pinned.IPCACHE) as ipc,
        pinned.open_map(maps_dir, pinned.POLICY) as pol,
        pinned.open_map(maps_dir, pinned.ENDPOINTS) as eps,
    ):
        maps = {"ipcache": ipc, "policy": pol, "endpoints": eps}
        ids = tuple(m.map_id() for m in maps.values())
        last = _APPLIED.pop(maps_dir, None)
        if last is not None and last.map_ids != ids:
            last = None
        want, unresolved = _want(plan, pods, last)
        have = last.state if last is not None else _pinned_state(maps)
        check_capacity(want, have)
        for op in iter_ops(want, have):
            spec = SPECS[op.map]
            if op.value is None:
                maps[op.map].delete(_mirror(spec.key, op.key))
                result.deletes += 1
            else:
                maps[op.map].update(_mirror(spec.key, op.key), _mirror(spec.value, op.value))
                result.writes += 1
        # Only after every write went in: a failed update leaves no cache,
        # and the next apply reads the pins again.
        _APPLIED[maps_dir] = _Applied(ids, want, plan.entries)
    result.unresolved = tuple(sorted(unresolved))
    result.endpoints = len(plan.endpoints) - len(unresolved)
    log.info(
        "policy applied",
        model_version=plan.model_version,
        writes=result.writes,
        deletes=result.deletes,
        endpoints=result.endpoints,
        unresolved=list(result.unresolved),
    )
    return result


def _pinned_state(maps: dict[str, PinnedMap[Mirror, Mirror]]) -> State:
    return {
        name: {kt: v.as_tuple() for kt, (_k, v) in m.items().items()} for name, m in maps.items()
    }


def set_events_allowed(maps_dir: Path, on: bool) -> None:
    """Also report allowed verdicts (denied ones are always reported)."""
    with pinned.open_map(maps_dir, pinned.POLICY_CONFIG) as m:
        m.update(U32(0), PolicyConfig(flags=EVENTS_ALLOWED if on else 0))
