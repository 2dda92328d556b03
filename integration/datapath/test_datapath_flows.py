"""Service events from the real kernel (issue 13): a connect to a VIP is a
"translated" flow, one steered to the node Envoy a "to-proxy" flow, and one
to a Service with no backends a DROPPED "no-backend" flow that says why. A
flood the agent does not read fills the ring, and what did not fit is
counted exactly.

The events are read as the agent reads them (events.Reader into a
FlowCollector); test_datapath_flows_observe.py shows them through the agent
and `nodemesh observe`.
"""

from __future__ import annotations

import select
from pathlib import Path
from typing import Any

import pytest

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh._gen.nodemesh.v1 import flow_pb2
from nodemesh.ebpf import events
from nodemesh.ebpf.events import DecodedEvent, EventType, Reason
from nodemesh.flows import text
from nodemesh.flows.collector import CollectorOptions, FlowCollector

from .conftest import Datapath
from .node import NODE_IP, MeshNode, Pod
from .plans import frontend, plan, redirect

pytestmark = pytest.mark.privileged

VIP, EMPTY_VIP, PROXY_PORT = "10.96.0.10", "10.96.0.30", 15001
# sizeof(struct nm_event) plus the ring's 8-byte record header.
RECORD_BYTES = 104 + 8
RING_BYTES = 256 * 1024


def drain(maps_dir: Path) -> list[DecodedEvent]:
    """Everything in the ring now, in order."""
    got: list[DecodedEvent] = []
    with events.Reader(maps_dir, got.append) as reader:
        while reader.consume():
            pass
    return got


def tcp(node: MeshNode, pod: Pod, vip: str, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = node.client(pod, "tcp-client", vip, "80", str(n))  # type: ignore[assignment]
    return out


@pytest.fixture
def world(node: MeshNode, datapath: Datapath) -> dict[str, Pod]:
    client, b1 = node.add_pod("default", "client"), node.add_pod("default", "b1")
    node.server(b1, "tcp-server", "8080", "b1")
    node.server(b1, "udp-server", "5353", "b1")
    datapath.apply(
        plan(
            frontend(VIP, 80, pb.TCP, [(b1.ip, 8080)], service="default/web"),
            frontend(VIP, 53, pb.UDP, [(b1.ip, 5353)], service="default/web"),
            frontend(EMPTY_VIP, 80, pb.TCP, [], service="default/empty"),
            frontend(EMPTY_VIP, 53, pb.UDP, [], service="default/empty"),
        )
    )
    events.set_service_events(datapath.config.maps_dir, True)
    drain(datapath.config.maps_dir)
    return {"client": client, "b1": b1}


def test_plain_l4_traffic_produces_translation_flows(
    node: MeshNode, datapath: Datapath, world: dict[str, Pod]
) -> None:
    client, b1 = world["client"], world["b1"]
    assert [r for r in tcp(node, client, VIP, 5) if "error" in r] == []
    udp: list[dict[str, Any]] = node.client(client, "udp-client", VIP, "53", "3")  # type: ignore[assignment]
    assert [r for r in udp if "error" in r] == []

    got = drain(datapath.config.maps_dir)
    assert [(e.type, e.proto) for e in got] == [(EventType.TRANSLATION, 6)] * 5 + [
        (EventType.TRANSLATION, 17)
    ] * 3
    assert {(e.orig_daddr, e.orig_dport, e.daddr, e.dport) for e in got[:5]} == {
        (VIP, 80, b1.ip, 8080)
    }
    assert {(e.orig_daddr, e.orig_dport, e.daddr, e.dport) for e in got[5:]} == {
        (VIP, 53, b1.ip, 5353)
    }
    # The client's own cgroup: who connected, before any source address exists.
    assert {e.cgroup_id for e in got} == {client.cgroup.stat().st_ino}
    flows = FlowCollector(CollectorOptions("node-a"), lambda: None)
    for event in got:
        flows.kernel_event(event)
    shown = flows.ring.recent()
    assert {(text.flow_type(f), text.verdict(f)) for f in shown} == {("translated", "FORWARDED")}
    assert shown[0].summary == f"TCP {VIP}:80 -> {b1.ip}:8080"
    assert shown[-1].summary == f"UDP {VIP}:53 -> {b1.ip}:5353"


def test_zero_backends_produce_a_refusal_flow(
    node: MeshNode, datapath: Datapath, world: dict[str, Pod]
) -> None:
    client = world["client"]
    assert {r["error"] for r in tcp(node, client, EMPTY_VIP, 3)} == {"ECONNREFUSED"}
    udp: list[dict[str, Any]] = node.client(client, "udp-client", EMPTY_VIP, "53", "2")  # type: ignore[assignment]
    assert {r["error"] for r in udp} == {"ECONNREFUSED"}

    got = drain(datapath.config.maps_dir)
    assert [(e.type, e.proto, e.reason) for e in got] == [
        (EventType.NO_BACKEND, 6, Reason.NO_BACKENDS)
    ] * 3 + [(EventType.NO_BACKEND, 17, Reason.NO_BACKENDS)] * 2
    assert {(e.orig_daddr, e.orig_dport) for e in got[:3]} == {(EMPTY_VIP, 80)}
    flows = FlowCollector(CollectorOptions("node-a"), lambda: None)
    flows.kernel_event(got[0])
    (refused,) = flows.ring.recent()
    assert (text.flow_type(refused), text.verdict(refused)) == ("no-backend", "DROPPED")
    assert refused.drop_reason_desc == flow_pb2.NO_SERVICE
    assert refused.summary == f"TCP {EMPTY_VIP}:80 refused: the Service has no backends"


def test_steering_to_the_node_envoy_is_a_to_proxy_flow(
    node: MeshNode, datapath: Datapath, world: dict[str, Pod]
) -> None:
    client, b1 = world["client"], world["b1"]
    node.server(None, "origdst-server", str(PROXY_PORT), cgroup=node.proxy_cgroup)
    web = frontend(VIP, 80, pb.TCP, [(b1.ip, 8080)], service="default/web")
    datapath.apply(plan(web, redirects=(redirect(web, PROXY_PORT, clients=None),)))
    drain(datapath.config.maps_dir)

    steered = tcp(node, client, VIP, 4)
    assert {r["backend"] for r in steered} == {"proxy"}
    got = drain(datapath.config.maps_dir)
    # The proxy's own connection to the backend is translated, never steered.
    kinds = [e.type for e in got]
    assert kinds.count(EventType.L7_STEER) == 4
    steer = [e for e in got if e.type == EventType.L7_STEER]
    assert {(e.orig_daddr, e.orig_dport, e.daddr, e.dport) for e in steer} == {
        (VIP, 80, NODE_IP, PROXY_PORT)
    }
    flows = FlowCollector(CollectorOptions("node-a"), lambda: None)
    flows.kernel_event(steer[0])
    (flow,) = flows.ring.recent()
    assert (text.flow_type(flow), text.verdict(flow)) == ("to-proxy", "REDIRECTED")


def test_service_events_can_be_switched_off_and_sampled(
    node: MeshNode, datapath: Datapath, world: dict[str, Pod]
) -> None:
    client, maps = world["client"], datapath.config.maps_dir
    events.set_service_events(maps, False)
    tcp(node, client, VIP, 3)
    tcp(node, client, EMPTY_VIP, 2)
    assert drain(maps) == []

    # One translation in 2^31 is none here (20 tries); refusals are never sampled.
    events.set_service_events(maps, True, sample_every=2**31)
    tcp(node, client, VIP, 20)
    tcp(node, client, EMPTY_VIP, 2)
    assert [e.type for e in drain(maps)] == [EventType.NO_BACKEND] * 2


def test_a_flood_fills_the_ring_and_the_lost_count_is_exact(
    node: MeshNode, datapath: Datapath, world: dict[str, Pod]
) -> None:
    maps = datapath.config.maps_dir
    before = events.lost(maps)
    # Refused connects: each one an event, nothing read until the end.
    flood = RING_BYTES // RECORD_BYTES + 1500
    assert {r["error"] for r in tcp(node, world["client"], EMPTY_VIP, flood)} == {"ECONNREFUSED"}

    got = drain(maps)
    lost = events.lost(maps) - before
    assert lost > 0
    assert len(got) + lost == flood
    assert {e.type for e in got} == {EventType.NO_BACKEND}
    flows = FlowCollector(CollectorOptions("node-a"), lambda: None)
    flows.lost_kernel(lost)
    assert flows.lost_kernel_events == lost


def test_the_reader_is_woken_per_batch_not_per_event(
    node: MeshNode, datapath: Datapath, world: dict[str, Pod]
) -> None:
    """A wakeup per event cost ~5 us per connect (bench/flows.py); the kernel
    wakes readers only as the ring fills past each eighth (events.h)."""
    maps, client = datapath.config.maps_dir, world["client"]
    mark = RING_BYTES // 8 // RECORD_BYTES  # events per eighth
    got: list[DecodedEvent] = []
    with events.Reader(maps, got.append) as reader:
        tcp(node, client, EMPTY_VIP, 10)
        assert select.select([reader.fileno()], [], [], 0)[0] == []
        assert reader.consume() == 10  # there all the same, for the timer to read
        tcp(node, client, EMPTY_VIP, mark + 10)
        assert select.select([reader.fileno()], [], [], 0)[0] == [reader.fileno()]
        assert reader.consume() == mark + 10
