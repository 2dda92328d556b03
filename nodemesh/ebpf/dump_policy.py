"""`nodemesh agent dump`, policy part: every local endpoint as `cilium endpoint list`
shows it (pod, identity, ingress/egress enforcement, policies), the pinned
state beside the plan, per-policy verdict counters and lost events."""

from __future__ import annotations

from pathlib import Path

from nodemesh.ebpf import events, pinned, policy_apply
from nodemesh.ebpf.endpoints import PodCgroups
from nodemesh.ebpf.identity import describe
from nodemesh.ebpf.mirrors import U32, IdentityValue, PolicyStats
from nodemesh.ebpf.policy_plan import FLAG_EGRESS, FLAG_INGRESS, PolicyPlan


def _on(flags: int, bit: int) -> str:
    return "Enabled" if flags & bit else "Disabled"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def endpoint_rows(plan: PolicyPlan | None, maps_dir: Path, pods: PodCgroups) -> list[str]:
    with pinned.open_map(maps_dir, pinned.ENDPOINTS) as m:
        have: dict[int, tuple[int, int]] = {}
        for key, value in m.items().values():
            assert isinstance(value, IdentityValue)
            have[int(key.as_tuple()[0])] = (int(value.identity), int(value.flags))
    rows: list[tuple[str, ...]] = [
        ("ENDPOINT", "IDENTITY", "INGRESS", "EGRESS", "POLICIES", "CGROUP", "STATE")
    ]
    seen: set[int] = set()
    for name, ep in (plan.endpoints if plan is not None else {}).items():
        ids = policy_apply.cgroup_ids(pods, name)
        seen.update(ids)
        pinned_as = have.get(ids[0]) if ids else None
        if not ids:
            state = "NO CGROUP"
        elif pinned_as == (ep.identity, ep.flags):
            state = "in sync"
        else:
            state = "MISSING" if pinned_as is None else "DIFFERS"
        rows.append(
            (
                name,
                str(ep.identity),
                _on(ep.flags, FLAG_INGRESS),
                _on(ep.flags, FLAG_EGRESS),
                str(len(ep.policies)),
                str(ids[0]) if ids else "-",
                state,
            )
        )
    for cgroup in sorted(set(have) - seen):
        identity, flags = have[cgroup]
        rows.append(
            (
                "(not in plan)" if plan is not None else "(no plan given)",
                describe(identity),
                _on(flags, FLAG_INGRESS),
                _on(flags, FLAG_EGRESS),
                "-",
                str(cgroup),
                "STALE" if plan is not None else "pinned",
            )
        )
    return _table(rows)


def counter_rows(plan: PolicyPlan | None, maps_dir: Path) -> list[str]:
    names = plan.policy_names if plan is not None else ("default-deny",)
    rows: list[tuple[str, ...]] = [("POLICY", "ALLOWED", "DENIED")]
    with pinned.open_map(maps_dir, pinned.POLICY_STATS) as m:
        for pid, name in enumerate(names):
            per_cpu = events.read_percpu(m.fd, U32(pid), PolicyStats)
            allowed = sum(int(v.as_tuple()[0]) for v in per_cpu)
            denied = sum(int(v.as_tuple()[1]) for v in per_cpu)
            rows.append((name, str(allowed), str(denied)))
    return [*_table(rows), f"events lost: {events.lost(maps_dir)}"]


def render(plan: PolicyPlan | None, maps_dir: Path, pods: PodCgroups) -> str:
    return "\n".join([*endpoint_rows(plan, maps_dir, pods), *counter_rows(plan, maps_dir)])
