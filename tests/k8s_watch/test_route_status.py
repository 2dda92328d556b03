"""status.parents for GAMMA routes: our entries only, other nodes' NACK lines kept."""

from __future__ import annotations

from typing import Any

from nodemesh.k8s_watch.route_status import parents_body
from nodemesh.model.gamma import CONTROLLER_NAME, Condition, ParentStatus, RouteStatus
from nodemesh.model.objects import Kind, ObjectRef
from nodemesh.model.routes import ParentRef

REF = ObjectRef(Kind.HTTP_ROUTE, "shop", "split")
PARENT = ParentRef("", "Service", "shop", "cart", 80)
ACCEPTED = ParentStatus(
    PARENT,
    (
        Condition("Accepted", True, "Accepted", "attached"),
        Condition("ResolvedRefs", True, "ResolvedRefs", "ok"),
    ),
)
STATUS = RouteStatus(REF, 3, (ACCEPTED,))
OTHER = {"parentRef": {"name": "gw"}, "controllerName": "example.net/gw", "conditions": []}
NOW = "2026-12-07T00:00:00Z"


def programmed(body: list[dict[str, Any]]) -> dict[str, Any]:
    [ours] = [p for p in body if p["controllerName"] == CONTROLLER_NAME]
    found: dict[str, Any] = next(c for c in ours["conditions"] if c["type"] == "Programmed")
    return found


def test_first_write_keeps_other_controllers_and_sets_generation() -> None:
    body = parents_body(STATUS, [OTHER], 3, [], NOW, "node-a")
    assert body is not None and body[0] == OTHER
    assert programmed(body)["status"] == "True"
    assert {c["observedGeneration"] for c in body[1]["conditions"]} == {3}
    # Written and read back: nothing to do.
    assert parents_body(STATUS, body, 3, [], NOW, "node-a") is None
    # A new generation is written again even with equal conditions.
    assert parents_body(STATUS, body, 4, [], NOW, "node-a") is not None


def test_each_node_owns_only_its_nack_lines() -> None:
    b_line = "node node-b rejected RouteConfiguration: bad"
    by_b = parents_body(STATUS, [], 3, [b_line], NOW, "node-b")
    assert by_b is not None and programmed(by_b)["reason"] == "EnvoyNACK"
    # Node a has no NACK of its own: node b's line stays.
    by_a = parents_body(STATUS, by_b, 3, [], NOW, "node-a")
    assert by_a is None or programmed(by_a)["message"] == b_line
    a_line = "node node-a rejected Listener: worse"
    both = parents_body(STATUS, by_b, 3, [a_line], NOW, "node-a")
    assert both is not None
    assert programmed(both)["message"] == f"{a_line}\n{b_line}"
    # Node b's NACK is gone: it removes its own line, node a's stays.
    cleared = parents_body(STATUS, both, 3, [], NOW, "node-b")
    assert cleared is not None and programmed(cleared)["message"] == a_line
