"""IPv6 frontends in the applier, without a kernel: the family rules, the
never-empty order on nm_services6_v1, and its overflow refusal."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, pinned
from nodemesh.ebpf.errors import PlanError, PlanTooLarge
from nodemesh.ebpf.mirrors import ServiceKey6, ServiceValue6, ip6_int, port_be
from nodemesh.model.objects import Pod

VIP6 = "fd00:96::10"
FE6 = (ip6_int(VIP6), port_be(80), 6)


class NoPods:
    """No pod runs here (compile_plan reads only cgroup_id)."""

    root = Path("/nonexistent")

    def observe(self, pods: Iterable[Pod]) -> None:
        pass

    def cgroup_id(self, pod: str) -> int | None:
        return None


def _fe(vip: str, backends: list[str]) -> pb.ServiceFrontend:
    return pb.ServiceFrontend(
        name=f"default/s:80/TCP@{vip}",
        vip=vip,
        port=80,
        protocol=pb.TCP,
        backends=[pb.Backend(address=b, port=8080) for b in backends],
    )


def _desired(*frontends: pb.ServiceFrontend) -> applier.Desired:
    return applier.compile_plan(pb.DatapathPlan(frontends=frontends), "10.0.0.1", NoPods())


def _b(i: int) -> str:
    return f"fd00:1:{i}::2"


State = dict[tuple[int, int, int, int], ServiceValue6]


def _replay(state: State, desired: applier.Desired) -> list[set[tuple[int, int]]]:
    grouped: dict[applier.Frontend, dict[int, applier.SlotValue]] = {}
    for (vip, port, proto, slot), v in state.items():
        grouped.setdefault((vip, port, proto), {})[slot] = v
    seen: list[set[tuple[int, int]]] = []
    for op in applier.plan_ops(desired, {}, {}, grouped):
        assert op.map == "services6" and isinstance(op.key, ServiceKey6)
        vip, port, proto, _pad, slot = op.key.as_tuple()
        if op.value is None:
            del state[(vip, port, proto, slot)]
        else:
            assert isinstance(op.value, ServiceValue6)
            state[(vip, port, proto, slot)] = op.value
        head = state.get((*FE6, 0))
        count = int(head.count) if head is not None else 0
        seen.append({applier.slot_addr(state[(*FE6, i)]) for i in range(1, count + 1)})
    return seen


def _addrs(idx: list[int]) -> set[tuple[int, int]]:
    return {(ip6_int(_b(i)), port_be(8080)) for i in idx}


def test_dual_stack_frontends_split_by_family() -> None:
    d = _desired(_fe("10.96.0.10", ["10.0.1.2"]), _fe(VIP6, [_b(1), _b(2)]))
    assert list(d.frontends6) == [FE6]
    assert d.frontends6[FE6] == sorted(_addrs([1, 2]))
    assert len(d.frontends) == 1


def test_ipv6_churn_never_shows_an_empty_or_unknown_backend() -> None:
    state: State = {}
    _replay(state, _desired(_fe(VIP6, [_b(1), _b(2)])))
    for before, after in (([1, 2], [2, 3, 4]), ([2, 3, 4], [5]), ([5], [1, 6])):
        for view in _replay(state, _desired(_fe(VIP6, [_b(i) for i in after]))):
            assert view and view <= _addrs(before) | _addrs(after)
        assert len(state) == 1 + len(after)
    assert applier.plan_ops(_desired(), {}, {}, {FE6: {0: ServiceValue6(count=0)}})[0].map == (
        "services6"
    )


@pytest.mark.parametrize(
    ("fe", "message"),
    [
        (_fe("10.96.0.10", ["fd00::2"]), "backends[0].address: 'fd00::2' is not an IPv4 address"),
        (_fe(VIP6, ["10.0.1.2"]), "backends[0].address: '10.0.1.2' is not an IPv6 address"),
        (_fe("::ffff:10.96.0.10", []), "vip: '::ffff:10.96.0.10' is IPv4-mapped; use 10.96.0.10"),
        (_fe("fd00::zz", []), "vip: 'fd00::zz' is not an IPv4 or IPv6 address"),
    ],
)
def test_mixed_families_are_refused_naming_the_field(fe: pb.ServiceFrontend, message: str) -> None:
    with pytest.raises(PlanError, match=re.escape(f"{fe.name}: {message}")):
        _desired(fe)


def test_an_ipv6_redirect_is_refused_by_name() -> None:
    red = pb.L7Redirect(name="l7:v6", vip=VIP6, port=80, protocol=pb.TCP, proxy_port=1)
    plan = pb.DatapathPlan(frontends=[_fe(VIP6, [])], redirects=[red])
    with pytest.raises(PlanError, match="l7:v6: vip: 'fd00:96::10': IPv6 connections are not"):
        applier.compile_plan(plan, "10.0.0.1", NoPods())


def test_services6_overflow_is_refused() -> None:
    spec = pinned.MapSpec("nm_services6_v1", ServiceKey6, ServiceValue6, capacity=2)
    ops = applier.plan_ops(_desired(_fe(VIP6, [_b(1), _b(2)])), {}, {}, {})
    with pytest.raises(PlanTooLarge, match=r"nm_services6_v1 would need 3 entries .* holds 2"):
        applier._check_capacity({"services6": spec}, {"services6": set()}, ops)
