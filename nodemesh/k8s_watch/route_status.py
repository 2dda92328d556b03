"""status.parents[] of HTTPRoutes and GRPCRoutes attached to Services (GAMMA).

Gateway API shares a route's status between controllers: each writes only
the entries whose controllerName is its own and keeps the others' (a Gateway
controller may report on the same route's Gateway parents). nodemesh's
entries are one per Service parentRef, with the model's Accepted and
ResolvedRefs conditions (the spec's reasons, see nodemesh.model.gamma) and a
Programmed condition: False with reason EnvoyNACK (node and Envoy's message)
when a node's Envoy rejected the listener or routes this route produced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nodemesh.k8s_watch.conditions import NackReport, nack_line
from nodemesh.model.gamma import CONTROLLER_NAME, ParentStatus, RouteStatus
from nodemesh.model.objects import ObjectRef
from nodemesh.model.snapshot import MeshModel

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")


def route_nacks(model: MeshModel, ref: ObjectRef, nacks: Iterable[NackReport]) -> list[str]:
    """Lines naming the NACKs of resources this route produced: the listener
    and RouteConfigurations of the redirects it owns (consumer routes'
    configs are "<route config>/consumer/<namespace>")."""
    owned: set[str] = set()
    prefixes: list[str] = []
    for redirect in model.redirects:
        if ref in redirect.owners:
            owned |= {redirect.listener, redirect.route_config}
            prefixes.append(f"{redirect.route_config}/consumer/")
    lines = []
    for nack in nacks:
        names = set(nack.resource_names)
        mine = names & owned or any(n.startswith(p) for n in names for p in prefixes)
        if mine or any(name in nack.message for name in owned):
            lines.append(nack_line(nack))
    return sorted(set(lines))


def _parent_ref(parent: ParentStatus) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "group": parent.parent.group,
        "kind": parent.parent.kind,
        "namespace": parent.parent.namespace,
        "name": parent.parent.name,
    }
    if parent.parent.port is not None:
        ref["port"] = parent.parent.port
    if parent.parent.section_name is not None:
        ref["sectionName"] = parent.parent.section_name
    return ref


def desired_conditions(parent: ParentStatus, nack_lines: Sequence[str]) -> list[dict[str, str]]:
    """Our conditions for one parent, without timestamps (compared as such)."""
    out = [
        {
            "type": c.type,
            "status": "True" if c.status else "False",
            "reason": c.reason,
            "message": c.message,
        }
        for c in parent.conditions
    ]
    if not parent.accepted:
        programmed = ("False", "NotAccepted", "Not accepted: nothing programmed")
    elif nack_lines:
        programmed = ("False", "EnvoyNACK", "\n".join(nack_lines))
    else:
        programmed = ("True", "Programmed", "Translated into Envoy configuration")
    out.append(dict(zip(("status", "reason", "message"), programmed, strict=True)))
    out[-1]["type"] = "Programmed"
    return out


def _same(current: Mapping[str, Any], wanted: Mapping[str, str], generation: int) -> bool:
    return all(current.get(k) == v for k, v in wanted.items()) and (
        current.get("observedGeneration") == generation
    )


def _foreign_nacks(old: Mapping[str, Any], node: str) -> list[str]:
    """Other nodes' EnvoyNACK lines in our entry as it is now: one agent per
    node reports, each owns only its node's lines (as for CECs), so agents
    converge instead of undoing each other's writes."""
    for cond in old.get("conditions") or []:
        if cond.get("type") == "Programmed" and cond.get("reason") == "EnvoyNACK":
            lines = str(cond.get("message", "")).split("\n")
            return [line for line in lines if line and not line.startswith(f"node {node} ")]
    return []


def parents_body(
    status: RouteStatus,
    current: Sequence[Mapping[str, Any]],
    generation: int,
    nack_lines: Sequence[str],
    now: str,
    node: str = "",
) -> list[dict[str, Any]] | None:
    """The new status.parents, or None when ours are already what they should be.

    Other controllers' entries are kept as they are; our entries are replaced,
    keeping a condition's lastTransitionTime while its status is unchanged,
    and other nodes' NACK lines (`node` is the reporting agent's)."""
    others = [dict(p) for p in current if p.get("controllerName") != CONTROLLER_NAME]
    ours_now = {
        _key(p.get("parentRef") or {}): p
        for p in current
        if p.get("controllerName") == CONTROLLER_NAME
    }
    ours: list[dict[str, Any]] = []
    unchanged = len(ours_now) == len(status.parents)
    for parent in status.parents:
        ref = _parent_ref(parent)
        old = ours_now.get(_key(ref), {})
        old_conditions = {c.get("type"): c for c in old.get("conditions") or []}
        lines = sorted({*nack_lines, *_foreign_nacks(old, node)}) if node else nack_lines
        conditions = []
        for wanted in desired_conditions(parent, lines):
            before = old_conditions.get(wanted["type"], {})
            unchanged = unchanged and _same(before, wanted, generation)
            moved = before.get("status") != wanted["status"]
            conditions.append(
                {
                    **wanted,
                    "observedGeneration": generation,
                    "lastTransitionTime": now if moved else before.get("lastTransitionTime", now),
                }
            )
        ours.append({"parentRef": ref, "controllerName": CONTROLLER_NAME, "conditions": conditions})
    if unchanged:
        return None
    return others + ours


def _key(ref: Mapping[str, Any]) -> tuple[object, ...]:
    return (
        ref.get("group", "gateway.networking.k8s.io"),
        ref.get("kind", "Gateway"),
        ref.get("namespace"),
        ref.get("name"),
        ref.get("port"),
        ref.get("sectionName"),
    )
