"""Kernel datapath events (the nm_event layout, decoded) as flows: each type
enriched from the model, an unknown type counted and skipped."""

from __future__ import annotations

from dataclasses import dataclass, replace

from nodemesh._gen.nodemesh.v1 import flow_pb2
from nodemesh.flows import text
from nodemesh.flows.collector import CollectorOptions, FlowCollector
from nodemesh.model.snapshot import MeshModel
from tests.support.factory import mesh_model, service
from tests.support.flows import CLIENT_IP, V1, canary_model

MODEL = canary_model()


@dataclass(frozen=True)
class Event:
    """Field for field, nodemesh.ebpf.events.DecodedEvent (input data, not a double)."""

    type: int = 2
    timestamp_ns: int = 1_000_000
    cgroup_id: int = 0
    saddr: str = CLIENT_IP
    sport: int = 40000
    daddr: str = V1[0]
    dport: int = V1[1]
    orig_daddr: str = "10.96.0.11"
    orig_dport: int = 80
    proto: int = 6
    verdict: int = 0
    src_identity: int = 0
    dst_identity: int = 0
    reason: int = 0
    key: bytes = b""


def _model_with_vip() -> MeshModel:
    vip = service("httpbin-v1", 80, ip="10.96.0.11")
    return mesh_model([vip], MODEL.backends, pods=MODEL.pods)


def collector() -> FlowCollector:
    model = _model_with_vip()
    return FlowCollector(CollectorOptions("n"), lambda: model)


def test_each_event_type_becomes_its_flow() -> None:
    flows = collector()
    for event in (
        Event(type=2),
        Event(type=3, daddr="127.0.0.1", dport=15001),
        Event(type=4, daddr="10.96.0.11", dport=80, proto=17, reason=1),
        Event(type=1, verdict=2, src_identity=1234, dst_identity=5678),
    ):
        flows.kernel_event(event)
    got = flows.ring.recent()
    assert [text.flow_type(f) for f in got] == [
        "translated",
        "to-proxy",
        "no-backend",
        "policy-verdict",
    ]
    assert [text.verdict(f) for f in got] == ["FORWARDED", "REDIRECTED", "DROPPED", "DROPPED"]
    translated = got[0]
    assert translated.Type == flow_pb2.L3_L4
    assert translated.source.pod_name == "curl-1"
    assert translated.destination.pod_name == "httpbin-v1-a"
    assert translated.destination_service.name == "httpbin-v1"
    assert translated.summary == "TCP 10.96.0.11:80 -> 10.0.2.1:8080 (default/httpbin-v1)"
    assert got[2].l4.WhichOneof("protocol") == "UDP"
    assert got[3].source.identity == 1234 and got[3].destination.identity == 5678
    assert got[3].drop_reason_desc == flow_pb2.POLICY_DENIED


def test_a_refusal_says_why() -> None:
    flows = collector()
    for reason in (1, 2, 7):
        flows.kernel_event(Event(type=4, daddr="10.96.0.11", dport=80, reason=reason))
    got = flows.ring.recent()
    assert [f.drop_reason_desc for f in got] == [
        flow_pb2.NO_SERVICE,
        flow_pb2.BACKEND_REMOVED,
        flow_pb2.NO_SERVICE,
    ]
    assert [f.summary for f in got] == [
        "TCP 10.96.0.11:80 (default/httpbin-v1) refused: the Service has no backends",
        "TCP 10.96.0.11:80 (default/httpbin-v1) refused: its backend went away as the "
        "Service shrank",
        "TCP 10.96.0.11:80 (default/httpbin-v1) refused: no backend (reason 7)",
    ]
    assert got[0].verdict == flow_pb2.DROPPED


def test_an_unknown_event_type_is_counted_and_skipped() -> None:
    flows = collector()
    flows.kernel_event(replace(Event(), type=99))
    assert flows.unknown_kernel_events == 1 and len(flows.ring) == 0


def test_kernel_loss_is_counted() -> None:
    flows = collector()
    flows.lost_kernel(7)
    assert flows.lost_kernel_events == 7


def test_a_client_without_an_address_is_found_by_its_cgroup() -> None:
    flows = collector()
    flows.cgroup_pods = {77: "default/curl-1"}.get
    flows.kernel_event(Event(saddr="0.0.0.0", cgroup_id=77))
    flows.kernel_event(Event(saddr="0.0.0.0", cgroup_id=78))
    found, unknown = flows.ring.recent()
    assert (found.source.namespace, found.source.pod_name) == ("default", "curl-1")
    assert "k8s:app=curl" in found.source.labels
    assert text.source(found) == "default/curl-1"
    assert unknown.source.pod_name == ""


def test_events_alike_but_for_time_and_port_share_one_resolution() -> None:
    models = [_model_with_vip()]
    flows = FlowCollector(CollectorOptions("n"), lambda: models[-1])
    flows.kernel_event(Event(key=b"k", sport=1, timestamp_ns=1_000))
    flows.kernel_event(Event(key=b"k", sport=2, timestamp_ns=2_000))
    first, second = flows.ring.recent()
    assert first is not second
    assert [f.l4.TCP.source_port for f in (first, second)] == [1, 2]
    assert second.time.ToNanoseconds() - first.time.ToNanoseconds() == 1_000
    assert second.destination.pod_name == "httpbin-v1-a"
    # A new model version resolves again (the backend's pod is gone from it).
    models.append(mesh_model([service("httpbin-v1", 80, ip="10.96.0.11")], version="v2"))
    flows.kernel_event(Event(key=b"k", sport=3))
    assert flows.ring.recent()[-1].destination.pod_name == ""
