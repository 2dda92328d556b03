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
    U64,
    IdentityValue,
    IpcacheKey,
    Mirror,
    PolicyConfig,
    PolicyKey,
    PolicyValue,
    ip_be,
    port_be,
)
from nodemesh.ebpf.policy_plan import PolicyPlan

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


@dataclass(frozen=True, slots=True)
class _Op:
    map: str
    key: Mirror
    value: Mirror | None

    def __str__(self) -> str:
        verb = "del" if self.value is None else "put"
        return f"{verb} {self.map} {self.key.as_tuple()}"


def ipcache_key(prefix: str) -> IpcacheKey:
    net = ipaddress.IPv4Network(prefix)
    return IpcacheKey(prefixlen=net.prefixlen, addr_be=ip_be(str(net.network_address)))


def policy_key(key: tuple[int, int, int, int, int, int]) -> PolicyKey:
    subject, direction, proto, remote, port, bits = key
    return PolicyKey(
        prefixlen=FIXED_BITS + bits,
        subject=subject,
        direction=direction,
        proto=proto,
        remote=remote,
        port_be=port_be(port),
    )


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
    plan: PolicyPlan, pods: PodCgroups
) -> tuple[dict[str, dict[tuple[int, ...], tuple[Mirror, Mirror]]], list[str]]:
    """Map name -> key tuple -> (key, value), and the endpoints with no cgroup here."""
    ipc: dict[tuple[int, ...], tuple[Mirror, Mirror]] = {}
    for prefix, (identity, flags) in plan.ipcache.items():
        k = ipcache_key(prefix)
        ipc[k.as_tuple()] = (k, IdentityValue(identity=identity, flags=flags))
    pol: dict[tuple[int, ...], tuple[Mirror, Mirror]] = {}
    for key, (verdict, pid) in plan.entries.items():
        pk = policy_key(key)
        pol[pk.as_tuple()] = (pk, PolicyValue(policy_id=pid, verdict=verdict))
    eps: dict[tuple[int, ...], tuple[Mirror, Mirror]] = {}
    unresolved = []
    for name, ep in plan.endpoints.items():
        ids = cgroup_ids(pods, name)
        if not ids:
            unresolved.append(name)
        for cg in ids:
            k64 = U64(cg)
            eps[k64.as_tuple()] = (k64, IdentityValue(identity=ep.identity, flags=ep.flags))
    return {"ipcache": ipc, "policy": pol, "endpoints": eps}, unresolved


def _current(m: PinnedMap[Mirror, Mirror]) -> dict[tuple[int, ...], tuple[Mirror, Mirror]]:
    return m.items()


def iter_ops(
    want: dict[str, dict[tuple[int, ...], tuple[Mirror, Mirror]]],
    have: dict[str, dict[tuple[int, ...], tuple[Mirror, Mirror]]],
) -> Iterator[_Op]:
    for name in ("ipcache", "policy", "endpoints"):
        for kt, (k, v) in sorted(want[name].items()):
            cur = have[name].get(kt)
            if cur is None or cur[1].as_tuple() != v.as_tuple():
                yield _Op(name, k, v)
    for name in ("policy", "endpoints", "ipcache"):
        for kt in sorted(set(have[name]) - set(want[name])):
            yield _Op(name, have[name][kt][0], None)


SPECS = {"ipcache": pinned.IPCACHE, "policy": pinned.POLICY, "endpoints": pinned.ENDPOINTS}


def check_capacity(
    want: dict[str, dict[tuple[int, ...], tuple[Mirror, Mirror]]],
    have: dict[str, dict[tuple[int, ...], tuple[Mirror, Mirror]]],
) -> None:
    """Adds land before deletes: the peak is what is pinned plus what is new."""
    for name, spec in SPECS.items():
        peak = len(have[name]) + len(set(want[name]) - set(have[name]))
        if peak > spec.capacity:
            raise PlanTooLarge(
                f"{spec.name} would need {peak} entries during the update but holds "
                f"{spec.capacity}; nothing was written"
            )
    if (
        len(want["policy"])
        and max(v[1].as_tuple()[0] for v in want["policy"].values()) >= pinned.POLICY_STATS.capacity
    ):
        raise PlanTooLarge(
            f"more than {pinned.POLICY_STATS.capacity - 1} policies; nothing was written"
        )


def apply(plan: PolicyPlan, maps_dir: Path, pods: PodCgroups) -> PolicyApplyResult:
    """Bring the pinned policy maps to `plan`, starting from what they hold."""
    want, unresolved = desired(plan, pods)
    result = PolicyApplyResult(plan.model_version, unresolved=tuple(sorted(unresolved)))
    result.endpoints = len(plan.endpoints) - len(unresolved)
    with (
        pinned.open_map(maps_dir, pinned.IPCACHE) as ipc,
        pinned.open_map(maps_dir, pinned.POLICY) as pol,
        pinned.open_map(maps_dir, pinned.ENDPOINTS) as eps,
    ):
        maps = {"ipcache": ipc, "policy": pol, "endpoints": eps}
        have = {name: _current(m) for name, m in maps.items()}
        check_capacity(want, have)
        for op in iter_ops(want, have):
            if op.value is None:
                maps[op.map].delete(op.key)
                result.deletes += 1
            else:
                maps[op.map].update(op.key, op.value)
                result.writes += 1
    log.info(
        "policy applied",
        model_version=plan.model_version,
        writes=result.writes,
        deletes=result.deletes,
        endpoints=result.endpoints,
        unresolved=list(result.unresolved),
    )
    return result


def set_events_allowed(maps_dir: Path, on: bool) -> None:
    """Also report allowed verdicts (denied ones are always reported)."""
    with pinned.open_map(maps_dir, pinned.POLICY_CONFIG) as m:
        m.update(U32(0), PolicyConfig(flags=EVENTS_ALLOWED if on else 0))
