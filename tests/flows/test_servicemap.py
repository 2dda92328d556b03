"""The service map's edges: counts by status class and verdict, denied flows
flagged, bounded edges."""

from __future__ import annotations

from nodemesh._gen.nodemesh.v1 import flow_pb2
from nodemesh.flows.enrich import Resolver
from nodemesh.flows.l7 import http_flow
from nodemesh.flows.servicemap import ServiceMap
from tests.support.flows import V2, canary_model, http_entry

RESOLVER = Resolver(canary_model())


def test_edges_count_status_classes_and_flag_denied_flows() -> None:
    service_map = ServiceMap()
    service_map.add(http_flow(http_entry(), RESOLVER, "n"))
    denied = http_flow(http_entry(V2, cluster="default/httpbin-v2", code=403), RESOLVER, "n")
    denied.verdict = flow_pb2.DROPPED
    service_map.add(denied)
    edges = {(e["source"], e["destination"]): e for e in service_map.graph()["edges"]}
    v1 = edges[("default/curl-1", "default/httpbin-v1-a")]
    v2 = edges[("default/curl-1", "default/httpbin-v2-a")]
    assert v1["status"] == {"2xx": 1} and v1["denied"] == 0
    assert v2["status"] == {"4xx": 1} and v2["denied"] == 1
    assert service_map.recent("default/curl-1", "default/httpbin-v2-a")[0]["verdict"] == "DROPPED"


def test_edges_past_the_cap_fold_into_one() -> None:
    service_map = ServiceMap(max_edges=2)
    for n in range(10):
        service_map.add(http_flow(http_entry(source=f"10.9.0.{n}"), RESOLVER, "n"))
        flow = http_flow(http_entry(), RESOLVER, "n")
        flow.source.pod_name = f"pod-{n}"
        service_map.add(flow)
    assert len(service_map.edges) <= 3
