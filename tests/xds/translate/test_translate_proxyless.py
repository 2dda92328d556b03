"""What proxyless gRPC clients get: every Service port as an `xds:///`
target (Listener with an api_listener, RouteConfiguration, EDS cluster),
served by name only, and localities in every ClusterLoadAssignment."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import yaml
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource
from nodemesh.xds.translate import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    TranslateOptions,
    Translator,
    translate,
)
from tests.support.protos import narrow
from tests.xds.translate import translate_models as m

TARGET = "httpbin.default.svc.cluster.local:80"


def test_every_service_port_is_a_target_with_an_api_listener() -> None:
    translation = translate(m.canary_model())
    for name in (TARGET, "httpbin-v1.default.svc.cluster.local:80"):
        listener = narrow(translation.resources[LISTENER][name], listener_pb2.Listener)
        assert not listener.HasField("address") and not listener.filter_chains
        manager = hcm_pb2.HttpConnectionManager()
        listener.api_listener.api_listener.Unpack(manager)
        assert manager.rds.route_config_name == name
        assert manager.rds.config_source.HasField("ads")
        assert [f.name for f in manager.http_filters] == ["envoy.filters.http.router"]
        assert name in translation.named_only[LISTENER]


def test_a_split_service_target_carries_the_cec_split() -> None:
    translation = translate(m.canary_model())
    route = narrow(translation.resources[ROUTE][TARGET], route_pb2.RouteConfiguration)
    [host] = route.virtual_hosts
    # The CEC's host named the Service "httpbin"; gRPC matches the target.
    assert list(host.domains) == ["httpbin", TARGET]
    weights = {c.name: c.weight.value for c in host.routes[0].route.weighted_clusters.clusters}
    assert weights == {"default/httpbin-v1": 90, "default/httpbin-v2": 10}


def test_a_plain_service_target_routes_to_its_eds_cluster() -> None:
    translation = translate(m.canary_model())
    name = "httpbin-v2.default.svc.cluster.local:80"
    [host] = narrow(translation.resources[ROUTE][name], route_pb2.RouteConfiguration).virtual_hosts
    assert list(host.domains) == ["*"] and host.routes[0].route.cluster == "default/httpbin-v2"
    assert "default/httpbin-v2" in translation.resources[CLUSTER]


def test_clusters_only_proxyless_clients_use_are_served_by_name_only() -> None:
    model = m.canary_model()
    extra = m.service("other", 9000, 9001)
    model = replace(model, services=MappingProxyType({**model.services, extra.service_name: extra}))
    translation = translate(model)
    assert {"default/other:9000", "default/other:9001"} <= translation.named_only[CLUSTER]
    assert "default/httpbin-v1" not in translation.named_only[CLUSTER]  # Envoy's too
    assert "default/other:9000" not in translation.wildcard_resources()[CLUSTER]
    assert "default/other:9000" in translation.resources[ENDPOINT]


def test_no_domain_no_targets() -> None:
    translation = translate(m.canary_model(), TranslateOptions(proxyless_domain=None))
    assert TARGET not in translation.resources[LISTENER]
    assert not translation.named_only


def test_other_cluster_domain() -> None:
    translation = translate(m.canary_model(), TranslateOptions(proxyless_domain="mesh.example"))
    assert "httpbin.default.svc.mesh.example:80" in translation.resources[LISTENER]


def test_localities_by_zone_weighted_by_endpoint_count() -> None:
    model = m.canary_model()
    zoned = (
        replace(m.backend("127.0.0.1", 1), zone="z-b"),
        replace(m.backend("127.0.0.2", 1), zone="z-a"),
        replace(m.backend("127.0.0.3", 1), zone="z-b"),
        m.backend("127.0.0.4", 1),
    )
    backends = {**model.backends, m.V1: MappingProxyType({80: zoned})}
    translation = translate(replace(model, backends=MappingProxyType(backends)))
    cla = narrow(
        translation.resources[ENDPOINT]["default/httpbin-v1"], endpoint_pb2.ClusterLoadAssignment
    )
    got = [
        (group.locality.zone, group.load_balancing_weight.value, len(group.lb_endpoints))
        for group in cla.endpoints
    ]
    assert got == [("", 1, 1), ("z-a", 1, 1), ("z-b", 2, 2)]
    # Unzoned endpoints still get a (empty) locality: gRPC drops endpoints without one.
    assert cla.endpoints[0].HasField("locality")


def test_an_endpoint_change_reuses_every_target_message() -> None:
    translator = Translator()
    v1 = m.canary_model()
    first = translator.translate(v1)
    moved = MappingProxyType({80: (m.backend("127.0.0.1", 18091),)})
    v2 = replace(v1, version="v2", backends=MappingProxyType({**v1.backends, m.V1: moved}))
    second = translator.translate(v2)
    for url in (LISTENER, ROUTE):
        for name in first.named_only[url]:
            assert second.resources[url][name] is first.resources[url][name]
    assert second.named_only == first.named_only


def test_endpoint_slice_zone_becomes_the_locality(tmp_path: Path) -> None:
    """Through the file source and the model store, as a user writes it."""
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "zoned", "namespace": "default"},
            "spec": {"ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "zoned-1",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "zoned"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": 9000, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "zone": "eu-1a"},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": True}, "zone": "eu-1b"},
            ],
        },
    ]
    (tmp_path / "zoned.yaml").write_text(yaml.safe_dump_all(docs))
    store = MeshStore()
    FileSource(tmp_path, store, source_name="test").load()
    translation = translate(store.build())
    cla = narrow(
        translation.resources[ENDPOINT]["default/zoned"], endpoint_pb2.ClusterLoadAssignment
    )
    assert [(g.locality.zone, g.load_balancing_weight.value) for g in cla.endpoints] == [
        ("eu-1a", 1),
        ("eu-1b", 1),
    ]


def test_a_gamma_route_reaches_the_target_of_its_parent_service() -> None:
    """The article's canary written as an HTTPRoute on the Service (GAMMA):
    a proxyless client of the Service gets the route's split."""
    store = MeshStore()
    FileSource(Path("examples/canary-httproute"), store, source_name="test").load()
    translation = translate(store.build())
    route = narrow(translation.resources[ROUTE][TARGET], route_pb2.RouteConfiguration)
    [host] = route.virtual_hosts  # GAMMA routes match any host ("*")
    [rule] = [r for r in host.routes if r.route.HasField("weighted_clusters")]
    weights = {c.name: c.weight.value for c in rule.route.weighted_clusters.clusters}
    assert weights == {"default/httpbin-v1": 90, "default/httpbin-v2": 10}
