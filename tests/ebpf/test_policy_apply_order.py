"""policy_apply's order and refusals, without a kernel: identities first,
then policy entries, then endpoints; deletes in reverse; oversize plans
refused before any write."""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh.ebpf import pinned, policy_apply, policy_plan
from nodemesh.ebpf.errors import PlanTooLarge
from nodemesh.model.store import MeshStore
from tests.ebpf.test_policy_plan import PODS, knp

Held = policy_apply.State


class Pods:
    root: Any = None

    def observe(self, pods: object) -> None:
        pass

    def cgroup_id(self, pod: str) -> int | None:
        return 1000 + sorted(
            p["metadata"]["namespace"] + "/" + p["metadata"]["name"] for p in PODS
        ).index(pod)


def plan_of(*objs: dict[str, Any]) -> policy_plan.PolicyPlan:
    store = MeshStore()
    for obj in (*PODS, *objs):
        store.apply("t", obj)
    return policy_plan.plan(store.build(), "n1")


DENY_WEB = knp("deny-web", {"podSelector": {"matchLabels": {"app": "web"}}})
ALLOW_CLI = knp(
    "web-from-cli",
    {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cli"}}}]}],
    },
)


def test_adds_go_identity_first_then_policy_then_endpoints() -> None:
    want, unresolved = policy_apply.desired(plan_of(DENY_WEB, ALLOW_CLI), Pods())
    assert unresolved == []
    empty: Held = {"ipcache": {}, "policy": {}, "endpoints": {}}
    order = [op.map for op in policy_apply.iter_ops(want, empty)]
    assert order == sorted(order, key=["ipcache", "policy", "endpoints"].index)
    assert set(order) == {"ipcache", "policy", "endpoints"}
    # The same state again: nothing to write.
    assert list(policy_apply.iter_ops(want, want)) == []


def test_removal_goes_policy_then_endpoints_then_identities() -> None:
    have, _ = policy_apply.desired(plan_of(DENY_WEB, ALLOW_CLI), Pods())
    want, _ = policy_apply.desired(plan_of(DENY_WEB), Pods())
    ops = list(policy_apply.iter_ops(want, have))
    deletes = [op.map for op in ops if op.value is None]
    assert deletes and deletes == sorted(deletes, key=["policy", "endpoints", "ipcache"].index)
    # Puts (changed endpoint flags stay, policy entries of ALLOW_CLI go) come first.
    first_delete = next(i for i, op in enumerate(ops) if op.value is None)
    assert all(op.value is None for op in ops[first_delete:])


def test_oversize_plan_refused_before_any_write(monkeypatch: pytest.MonkeyPatch) -> None:
    want, _ = policy_apply.desired(plan_of(DENY_WEB, ALLOW_CLI), Pods())
    small = pinned.MapSpec("nm_policy_v1", pinned.POLICY.key, pinned.POLICY.value, 1)
    monkeypatch.setitem(policy_apply.SPECS, "policy", small)
    empty: Held = {"ipcache": {}, "policy": {}, "endpoints": {}}
    with pytest.raises(PlanTooLarge, match="nm_policy_v1 would need"):
        policy_apply.check_capacity(want, empty)
