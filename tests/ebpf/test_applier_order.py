"""The applier's update order and refusals, checked without a kernel.

`plan_ops` is replayed on a dict standing in for the services map; after
every single op, each frontend's visible slots (1..count) must hold real
backends, and a frontend that has backends before and after must never be
seen with zero.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, pinned
from nodemesh.ebpf.errors import PlanError, PlanTooLarge
from nodemesh.ebpf.mirrors import ServiceKey, ServiceValue, ServiceValue6, ip_be, port_be
from nodemesh.model.objects import Pod

VIP = "10.96.0.10"
FE = (ip_be(VIP), port_be(80), 6)


class NoPods:
    """No pod runs here (compile_plan reads only cgroup_id)."""

    root = Path("/nonexistent")

    def observe(self, pods: Iterable[Pod]) -> None:
        pass

    def cgroup_id(self, pod: str) -> int | None:
        return {"default/curl": 4242}.get(pod)


def _fe(backends: list[int], vip: str = VIP) -> pb.ServiceFrontend:
    return pb.ServiceFrontend(
        name=f"default/s:80/TCP@{vip}",
        vip=vip,
        port=80,
        protocol=pb.TCP,
        backends=[pb.Backend(address=f"10.0.{b}.2", port=8080) for b in backends],
    )


def _desired(
    *frontends: pb.ServiceFrontend, redirects: tuple[pb.L7Redirect, ...] = ()
) -> applier.Desired:
    plan = pb.DatapathPlan(model_version="t", frontends=frontends, redirects=redirects)
    return applier.compile_plan(plan, "10.0.0.1", NoPods())


State = dict[tuple[int, int, int, int], ServiceValue]


def _grouped(state: State) -> dict[applier.Frontend, dict[int, ServiceValue | ServiceValue6]]:
    out: dict[applier.Frontend, dict[int, ServiceValue | ServiceValue6]] = {}
    for (vip, port, proto, slot), v in state.items():
        out.setdefault((vip, port, proto), {})[slot] = v
    return out


def _visible(state: State, fe: applier.Frontend) -> list[tuple[int, int]] | None:
    head = state.get((*fe, 0))
    if head is None:
        return None
    slots = [state.get((*fe, i)) for i in range(1, head.count + 1)]
    assert all(s is not None for s in slots), "count covers a missing slot"
    return [(s.addr_be, s.port_be) for s in slots if s is not None]


def _replay(state: State, desired: applier.Desired) -> list[list[tuple[int, int]] | None]:
    """Apply ops one by one; return what a connect would see after each."""
    ops = applier.plan_ops(desired, _grouped(state), {})
    seen = []
    for op in ops:
        if op.map != "services":
            continue
        assert isinstance(op.key, ServiceKey)
        key = (op.key.vip_be, op.key.port_be, op.key.proto, op.key.slot)
        if op.value is None:
            del state[key]
        else:
            assert isinstance(op.value, ServiceValue)
            state[key] = op.value
        seen.append(_visible(state, FE))
    return seen


def _addrs(backends: list[int]) -> set[tuple[int, int]]:
    return {(ip_be(f"10.0.{b}.2"), port_be(8080)) for b in backends}


@pytest.mark.parametrize(
    ("before", "after"),
    [([1, 2], [1, 2, 3]), ([1, 2, 3], [3]), ([1, 2], [3, 4]), ([1, 2, 3, 4], [4, 5]), ([1], [2])],
)
def test_every_intermediate_state_has_only_real_backends(
    before: list[int], after: list[int]
) -> None:
    state: State = {}
    _replay(state, _desired(_fe(before)))
    for view in _replay(state, _desired(_fe(after))):
        assert view, "a VIP with backends before and after was seen empty"
        assert set(view) <= _addrs(before) | _addrs(after)
    assert set(_visible(state, FE) or []) == _addrs(after)
    assert len(state) == 1 + len(after)  # no stray slots left


def test_random_churn_keeps_invariants() -> None:
    rng = random.Random(7)
    state: State = {}
    current = [1, 2]
    _replay(state, _desired(_fe(current)))
    for _ in range(200):
        nxt = sorted(rng.sample(range(1, 20), rng.randint(1, 8)))
        for view in _replay(state, _desired(_fe(nxt))):
            assert view and set(view) <= _addrs(current) | _addrs(nxt)
        current = nxt
        assert set(_visible(state, FE) or []) == _addrs(current)


def test_survivors_keep_their_slots() -> None:
    state: State = {}
    _replay(state, _desired(_fe([1, 2, 3])))
    slot_of_3 = next(
        k[3] for k, v in state.items() if k[3] and (v.addr_be, v.port_be) in _addrs([3])
    )
    _replay(state, _desired(_fe([3, 4, 5])))
    assert (state[(*FE, slot_of_3)].addr_be, state[(*FE, slot_of_3)].port_be) in _addrs([3])


def test_removed_frontend_goes_before_its_slots_and_redirects_before_frontends() -> None:
    state: State = {}
    fe = _fe([1, 2])
    red = pb.L7Redirect(
        name="l7:x",
        frontend=fe.name,
        vip=VIP,
        port=80,
        protocol=pb.TCP,
        proxy_port=15001,
        all_clients=True,
    )
    _replay(state, _desired(fe))
    current_l7 = applier.compile_plan(
        pb.DatapathPlan(frontends=[fe], redirects=[red]), "10.0.0.1", NoPods()
    ).redirects
    ops = applier.plan_ops(_desired(), _grouped(state), current_l7)
    kinds = [(o.map, o.value is None, getattr(o.key, "slot", None)) for o in ops]
    assert kinds[0] == ("l7", True, None)
    assert kinds[1] == ("services", True, 0)
    assert all(k[:2] == ("services", True) for k in kinds[1:])


def test_reconciling_an_identical_state_is_a_no_op() -> None:
    state: State = {}
    desired = _desired(_fe([1, 2, 3]))
    _replay(state, desired)
    assert applier.plan_ops(desired, _grouped(state), {}) == []


def test_zero_backends_keeps_the_frontend_with_count_zero() -> None:
    state: State = {}
    _replay(state, _desired(_fe([1, 2])))
    _replay(state, _desired(_fe([])))
    assert state == {(*FE, 0): state[(*FE, 0)]} and state[(*FE, 0)].count == 0


def test_redirect_for_selected_pods_keys_their_cgroups() -> None:
    fe = _fe([1])
    red = pb.L7Redirect(
        name="l7:x",
        frontend=fe.name,
        vip=VIP,
        port=80,
        protocol=pb.TCP,
        proxy_port=15001,
        clients=[pb.ClientPod(pod="default/curl"), pb.ClientPod(pod="default/elsewhere")],
    )
    desired = _desired(fe, redirects=(red,))
    assert list(desired.redirects) == [(4242, *FE)]
    assert desired.unresolved_clients == ("default/elsewhere",)


@pytest.mark.parametrize(
    ("frontend", "message"),
    [
        (
            pb.ServiceFrontend(name="a", vip="10.96.0.300", port=80, protocol=pb.TCP),
            "a: vip: '10.96.0.300' is not an IPv4",
        ),
        (
            pb.ServiceFrontend(name="b", vip=VIP, port=0, protocol=pb.TCP),
            "b: port: 0 is not a port",
        ),
        (pb.ServiceFrontend(name="c", vip=VIP, port=80), "c: protocol: must be TCP or UDP"),
        (
            pb.ServiceFrontend(
                name="d",
                vip=VIP,
                port=80,
                protocol=pb.UDP,
                backends=[pb.Backend(address="fd00::1", port=53)],
            ),
            "d: backends[0].address: 'fd00::1' is not an IPv4",
        ),
    ],
)
def test_bad_entries_are_refused_naming_entry_and_field(
    frontend: pb.ServiceFrontend, message: str
) -> None:
    with pytest.raises(PlanError, match=re.escape(message)):
        _desired(frontend)


def test_redirect_without_its_frontend_is_refused() -> None:
    red = pb.L7Redirect(
        name="l7:y", frontend="nope", vip=VIP, port=80, protocol=pb.TCP, proxy_port=1
    )
    with pytest.raises(PlanError, match="l7:y: frontend: 'nope' is not in the plan"):
        _desired(redirects=(red,))


def test_overflow_is_refused_counting_the_transition_peak() -> None:
    spec = pinned.MapSpec("nm_services_v1", ServiceKey, ServiceValue, capacity=4)
    ops = applier.plan_ops(_desired(_fe([3, 4])), {}, {})  # frontend + 2 slots
    specs = {"services": spec}
    applier._check_capacity(specs, {"services": set()}, ops)
    # Two entries of another frontend that this plan removes: they are deleted
    # only after the adds, so for a moment all five exist.
    other = {
        ServiceKey(vip_be=ip_be("10.96.0.99"), port_be=port_be(80), proto=6, slot=s).as_tuple()
        for s in (0, 1)
    }
    with pytest.raises(PlanTooLarge, match=r"nm_services_v1 would need 5 entries .* holds 4"):
        applier._check_capacity(specs, {"services": other}, ops)


def test_l7_flag_lands_before_a_redirect_and_goes_before_its_removal() -> None:
    key = (ip_be(VIP), port_be(80), 6)
    redirect = (0, *key)
    target = (ip_be("10.0.0.1"), port_be(15001))
    plain = applier.Desired({key: [(ip_be("10.1.0.1"), port_be(8080))]}, {})
    steered = applier.Desired(plain.frontends, {redirect: target})
    grouped: dict[applier.Frontend, dict[int, applier.SlotValue]] = {}

    def head(ops: list[applier.Op]) -> list[tuple[str, int | None]]:
        out: list[tuple[str, int | None]] = []
        for op in ops:
            if op.map == "services" and op.key.as_tuple()[-1] == 0 and op.value is not None:
                out.append(("flags", op.value.as_tuple()[0]))
            elif op.map == "l7":
                out.append(("l7", None if op.value is None else 1))
        return out

    first = applier.plan_ops(plain, grouped, {})
    assert head(first) == [("flags", 0)]
    state: dict[applier.Frontend, dict[int, applier.SlotValue]] = {
        key: {0: ServiceValue(addr_be=0, port_be=0, count=1)}
    }
    assert head(applier.plan_ops(steered, state, {})) == [("flags", applier.FE_L7), ("l7", 1)]
    flagged: dict[applier.Frontend, dict[int, applier.SlotValue]] = {
        key: {0: ServiceValue(addr_be=applier.FE_L7, port_be=0, count=1)}
    }
    assert head(applier.plan_ops(plain, flagged, {redirect: target})) == [
        ("flags", 0),
        ("l7", None),
    ]
