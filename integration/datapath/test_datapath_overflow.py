"""A plan that would overflow a pinned map is refused before any write."""

from __future__ import annotations

import ipaddress

import pytest

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, pinned
from nodemesh.ebpf.errors import PlanTooLarge

from .conftest import Datapath
from .node import MeshNode
from .plans import frontend, plan

pytestmark = pytest.mark.privileged


def test_overflowing_plan_writes_nothing(node: MeshNode, datapath: Datapath) -> None:
    small = plan(frontend("10.96.0.10", 80, pb.TCP, [("10.0.1.2", 8080)]))
    datapath.apply(small)
    with pinned.open_map(datapath.config.maps_dir, pinned.SERVICES) as m:
        before = {k: v.as_tuple() for k, (_, v) in m.items().items()}

    base = int(ipaddress.IPv4Address("10.128.0.0"))
    many = [(str(ipaddress.IPv4Address(base + i)), 8080) for i in range(applier.MAX_BACKENDS)]
    huge = plan(
        frontend("10.96.0.11", 80, pb.TCP, many),
        frontend("10.96.0.12", 80, pb.TCP, many[:10]),
    )
    with pytest.raises(PlanTooLarge, match="nm_services_v1 would need"):
        datapath.apply(huge)

    with pinned.open_map(datapath.config.maps_dir, pinned.SERVICES) as m:
        after = {k: v.as_tuple() for k, (_, v) in m.items().items()}
    assert after == before
