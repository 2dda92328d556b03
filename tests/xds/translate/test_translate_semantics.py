"""Translation semantics beyond the golden files: naming, service resolution,
errors that keep the previous config, node selection, determinism, reuse."""

from __future__ import annotations

import copy
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest
import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

from nodemesh.model.objects import (
    HeaderMatch,
    HTTPRule,
    Kind,
    LabelSelector,
    ObjectRef,
    RedirectedService,
    pairs,
)
from nodemesh.model.snapshot import MeshModel
from nodemesh.xds.translate import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    RESOURCE_TYPES,
    ROUTE,
    TranslateOptions,
    Translator,
    encode,
    translate,
)
from nodemesh.xds.translate import configs as configs_module
from nodemesh.xds.translate.listeners import ORIGINAL_DST_FILTER
from nodemesh.xds.translate.rbac import RBAC_FILTER
from nodemesh.xds.translate.registry import unpack
from tests.support.protos import narrow
from tests.xds.translate import translate_models as m

CCEC = ObjectRef(Kind.CLUSTERWIDE_ENVOY_CONFIG, "", "mirror")


def _route(cluster: str, name: str = "r") -> dict[str, Any]:
    return {
        "name": name,
        "virtual_hosts": [
            {
                "name": "vh",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
            }
        ],
    }


def _with_configs(*configs: Any) -> MeshModel:
    base = m.canary_model()
    return replace(base, envoy_configs=(*base.envoy_configs, *configs))


def _rbac(listener: Any) -> Any:
    manager = narrow(
        unpack(listener.filter_chains[0].filters[0].typed_config),
        http_connection_manager_pb2.HttpConnectionManager,
    )
    for http_filter in manager.http_filters:
        if http_filter.name == RBAC_FILTER:
            config = rbac_filter_pb2.RBAC()
            http_filter.typed_config.Unpack(config)
            return config.rules
    return None


def test_clusterwide_names_and_port_forms() -> None:
    multi = m.service("multi", 80, 9090)
    route = _route("default/multi:9090")
    route["virtual_hosts"][0]["routes"].append(
        {"match": {"prefix": "/v1"}, "route": {"cluster": "default/httpbin-v1:80"}}
    )
    config = m.envoy_config(CCEC, [(ROUTE, route)])
    base = _with_configs(config)
    translation = translate(
        replace(base, services=MappingProxyType({**base.services, multi.service_name: multi}))
    )
    assert translation.errors == ()
    served = narrow(translation.resources[ROUTE]["mirror/r"], route_pb2.RouteConfiguration)
    targets = [r.route.cluster for r in served.virtual_hosts[0].routes]
    assert targets == ["default/multi:9090", "default/httpbin-v1"]
    assert {"default/multi:9090", "default/httpbin-v1"} <= set(translation.resources[CLUSTER])


def test_ambiguous_port_and_missing_service_reject_only_that_config() -> None:
    multi = m.service("multi", 80, 9090)
    bad = m.envoy_config(CCEC, [(ROUTE, _route("default/multi"))])
    missing = m.envoy_config(
        ObjectRef(Kind.ENVOY_CONFIG, "default", "gone"), [(ROUTE, _route("default/nope"))]
    )
    base = _with_configs(bad, missing)
    model = replace(base, services=MappingProxyType({**base.services, multi.service_name: multi}))
    translation = translate(model)
    reasons = {e.ref.name: e for e in translation.errors}
    assert "has ports 80, 9090" in reasons["mirror"].reason
    assert reasons["mirror"].field == "spec.resources[0].virtual_hosts[0].routes[0].route.cluster"
    assert "default/nope" in reasons["gone"].reason and not reasons["gone"].kept_previous
    assert "mirror/r" not in translation.resources[ROUTE]
    assert "default/gone/r" not in translation.resources[ROUTE]
    # The canary still translates.
    assert "default/httpbin-traffic-split/httpbin-listener-route" in translation.resources[ROUTE]


def test_name_that_would_shadow_a_service_cluster_is_a_conflict() -> None:
    config = m.envoy_config(
        ObjectRef(Kind.CLUSTERWIDE_ENVOY_CONFIG, "", "default"),
        [(CLUSTER, m.OWN_CLUSTER | {"name": "httpbin-v1"})],
    )
    translation = translate(_with_configs(config))
    [error] = translation.errors
    assert error.field == "spec.resources[0].name" and "default/httpbin-v1" in error.reason
    assert (
        narrow(translation.resources[CLUSTER]["default/httpbin-v1"], cluster_pb2.Cluster).type
        == cluster_pb2.Cluster.EDS
    )


def test_previous_translation_is_kept_through_translate_previous() -> None:
    good = translate(m.canary_model())
    route = copy.deepcopy(m.ARTICLE_ROUTE)
    route["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]["clusters"][0]["name"] = (
        "default/missing"
    )
    bad = translate(m.canary_model(route, version="v2"), previous=good)
    [error] = bad.errors
    assert error.kept_previous
    name = "default/httpbin-traffic-split/httpbin-listener-route"
    assert encode(bad.resources[ROUTE][name]) == encode(good.resources[ROUTE][name])
    # Without the previous translation there is nothing to keep: the redirected
    # Service's requests go to the Service itself, and the error says so.
    alone = translate(m.canary_model(route, version="v2"))
    assert not any(e.kept_previous for e in alone.errors)
    fallback = (
        narrow(alone.resources[ROUTE][name], route_pb2.RouteConfiguration)
        .virtual_hosts[0]
        .routes[0]
        .route
    )
    assert fallback.cluster == "default/httpbin"
    assert any("go to the Service itself" in e.reason for e in alone.errors)


def test_deleted_config_takes_its_resources_and_memory_along() -> None:
    translator = Translator()
    translator.translate(m.canary_model())
    empty = replace(m.canary_model(), envoy_configs=(), redirects=())
    translation = translator.translate(empty)
    envoy = translation.wildcard_resources()
    assert not envoy[ROUTE] and not envoy[LISTENER]
    assert not translation.last_good
    # What is left is served to proxyless clients by name: plain routes to each Service.
    assert translation.resources[ROUTE].keys() == translation.named_only[ROUTE]


def test_node_selector_picks_configs_for_this_node() -> None:
    selector = LabelSelector(match_labels=pairs({"mesh": "edge"}))
    config = replace(
        m.envoy_config(CCEC, [(ROUTE, _route("default/httpbin-v1"))]), node_selector=selector
    )
    model = _with_configs(config)
    edge = TranslateOptions(node_name="n1", node_labels=pairs({"mesh": "edge"}))
    other = TranslateOptions(node_name="n2")
    assert "mirror/r" in translate(model, edge).resources[ROUTE]
    assert "mirror/r" not in translate(model, other).resources[ROUTE]
    assert "mirror/r" in translate(model).resources[ROUTE]  # no node: every config


def test_same_model_gives_byte_identical_resources() -> None:
    first, second = translate(m.policy_model()), translate(m.policy_model())
    for url, named in first.resources.items():
        assert named.keys() == second.resources[url].keys()
        for name, message in named.items():
            assert encode(message) == encode(second.resources[url][name])


def test_one_endpoint_change_rebuilds_only_that_assignment() -> None:
    translator = Translator()
    v1 = m.canary_model()
    before = translator.translate(v1)
    changed = MappingProxyType(
        {**v1.backends, m.V2: MappingProxyType({80: (m.backend("127.0.0.1", 18083),)})}
    )
    after = translator.translate(replace(v1, version="v2", backends=changed))
    for url, named in after.resources.items():
        for name, message in named.items():
            same = message is before.resources[url][name]
            assert same == ((url, name) != (ENDPOINT, "default/httpbin-v2")), (url, name)
    socket = (
        narrow(after.resources[ENDPOINT]["default/httpbin-v2"], endpoint_pb2.ClusterLoadAssignment)
        .endpoints[0]
        .lb_endpoints[0]
    )
    assert socket.endpoint.address.socket_address.port_value == 18083


def test_restricted_clients_and_unrestricted_others() -> None:
    """A CEC steers everyone; a CNP restricts the curl pod: others stay allowed."""
    rules = (HTTPRule(path="/get"),)
    redirect = replace(
        m.canary_redirect(),
        policies=(replace(m.canary_redirect().policies[0], client_ips=("10.0.0.5",), rules=rules),),
    )
    translation = translate(replace(m.canary_model(), redirects=(redirect,)))
    rules_pb = _rbac(translation.resources[LISTENER]["default/httpbin-traffic-split/listener"])
    assert rules_pb.action == rbac_pb2.RBAC.ALLOW
    others = rules_pb.policies["clients without a policy"].principals[0]
    assert others.not_id.direct_remote_ip.address_prefix == "10.0.0.5"
    curl = rules_pb.policies[f"{m.CNP_REF} #0"]
    assert curl.permissions[0].header.name == ":path"
    assert curl.permissions[0].header.string_match.safe_regex.regex == "/get"


def test_allow_all_policy_adds_no_rbac_and_mismatch_warns() -> None:
    assert (
        _rbac(
            translate(m.canary_model()).resources[LISTENER][
                "default/httpbin-traffic-split/listener"
            ]
        )
        is None
    )
    rules = (HTTPRule(method="GET", header_matches=(HeaderMatch("x-env", "prod", "LOG"),)),)
    translation = translate(m.policy_model(rules))
    [warning] = translation.warnings
    assert warning.ref == m.POLICY_REF
    assert warning.field == "rules.http[0].headerMatches[0].mismatch"


def test_original_dst_option_adds_the_listener_filter() -> None:
    translation = translate(m.policy_model(), TranslateOptions(use_original_dst=True))
    listener = narrow(
        translation.resources[LISTENER]["nodemesh/l7/default/api/8080"], listener_pb2.Listener
    )
    assert [f.name for f in listener.listener_filters] == [ORIGINAL_DST_FILTER]


def test_shared_listener_ties_rules_to_each_destination() -> None:
    """Two service ports on one CEC listener with distinct proxy ports: each
    redirect's rules are scoped by its own proxy port."""
    first = replace(m.policy_redirect(m.READONLY_RULES, ("10.0.0.5",)), listener="shared")
    second = replace(first, port=9090, proxy_port=15009)
    api = m.service("api", 8080, 9090, ip="10.96.0.20")
    model = m.model([api], {}, redirects=[first, second])
    listener = narrow(translate(model).resources[LISTENER]["shared"], listener_pb2.Listener)
    assert listener.address.socket_address.port_value == 15002
    assert [a.address.socket_address.port_value for a in listener.additional_addresses] == [15009]
    rules_pb = _rbac(listener)
    scoped = rules_pb.policies[f"default/api:9090 {m.POLICY_REF} #1"].permissions[0]
    assert scoped.and_rules.rules[0].destination_port == 15009


def test_cec_listener_without_address_or_redirect_is_left_out() -> None:
    own = m.own_listener_model()
    unbound = translate(replace(own, redirects=()))
    [error] = unbound.errors
    assert error.ref == m.OWN_REF and error.field == "spec.resources[0].address"
    assert "shop/edge/edge-listener" not in unbound.resources[LISTENER]
    assert "shop/edge/edge-routes" in unbound.resources[ROUTE]  # the rest still serves
    with_address = m.OWN_LISTENER | {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 18000}}
    }
    config = m.envoy_config(
        m.OWN_REF,
        [(LISTENER, with_address), (ROUTE, m.OWN_ROUTE), (CLUSTER, m.OWN_CLUSTER)],
    )
    served = translate(replace(own, envoy_configs=(config,), redirects=()))
    assert served.errors == ()
    listener = narrow(served.resources[LISTENER]["shop/edge/edge-listener"], listener_pb2.Listener)
    assert listener.address.socket_address.port_value == 18000


def test_conflicting_qualified_names_reject_the_newer_config() -> None:
    """A clusterwide CEC named "default" defining "httpbin-traffic-split/httpbin-
    listener-route" would collide with the canary's route: the older one wins."""
    clusterwide = ObjectRef(Kind.CLUSTERWIDE_ENVOY_CONFIG, "", "default")
    route = m.ARTICLE_ROUTE | {"name": "httpbin-traffic-split/httpbin-listener-route"}
    newer = m.envoy_config(clusterwide, [(ROUTE, route)], created="2026-06-01T00:00:00Z")
    translation = translate(_with_configs(newer))
    [error] = translation.errors
    assert error.ref == clusterwide and error.field == "spec.resources[0].name"
    assert "already defined by CiliumEnvoyConfig default/httpbin-traffic-split" in error.reason
    older = replace(newer, creation_timestamp="2025-01-01T00:00:00Z")
    [error] = translate(_with_configs(older)).errors
    assert error.ref == m.CEC_REF


def test_backend_services_feed_eds_for_their_ports() -> None:
    multi = m.service("multi", 80, 9090)
    config = replace(
        m.envoy_config(CCEC, [(ROUTE, _route("default/httpbin-v1"))]),
        backend_services=(RedirectedService(multi.service_name, ports=(9090,)),),
    )
    base = _with_configs(config)
    backends = {**base.backends, multi.service_name: {9090: (m.backend("10.0.3.1", 9090),)}}
    model = replace(
        base,
        services=MappingProxyType({**base.services, multi.service_name: multi}),
        backends=MappingProxyType(backends),
    )
    translation = translate(model)
    envoy = translation.wildcard_resources()
    assert "default/multi:9090" in envoy[CLUSTER]
    assert "default/multi:80" not in envoy[CLUSTER]
    # Proxyless gRPC clients may ask for port 80 by name.
    assert "default/multi:80" in translation.named_only[CLUSTER]
    assignment = narrow(
        translation.resources[ENDPOINT]["default/multi:9090"], endpoint_pb2.ClusterLoadAssignment
    )
    assert (
        assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 9090
    )


def test_redirect_of_a_config_for_other_nodes_passes_through_quietly() -> None:
    selector = LabelSelector(match_labels=pairs({"mesh": "edge"}))
    base = m.canary_model()
    model = replace(base, envoy_configs=(replace(base.envoy_configs[0], node_selector=selector),))
    here = translate(model, TranslateOptions(node_name="n2"))
    assert here.errors == ()
    name = "default/httpbin-traffic-split/httpbin-listener-route"
    assert (
        narrow(here.resources[ROUTE][name], route_pb2.RouteConfiguration)
        .virtual_hosts[0]
        .routes[0]
        .route.cluster
        == "default/httpbin"
    )
    edge = translate(model, TranslateOptions(node_name="n1", node_labels=pairs({"mesh": "edge"})))
    assert edge.errors == ()
    assert (
        narrow(edge.resources[ROUTE][name], route_pb2.RouteConfiguration)
        .virtual_hosts[0]
        .routes[0]
        .route.HasField("weighted_clusters")
    )


def test_references_already_in_qualified_form_are_accepted() -> None:
    listener = copy.deepcopy(m.OWN_LISTENER)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["rds"]["route_config_name"] = "shop/edge/edge-routes"
    route = copy.deepcopy(m.OWN_ROUTE)
    route["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "shop/edge/legacy"
    config = m.envoy_config(
        m.OWN_REF,
        [(LISTENER, listener), (ROUTE, route), (CLUSTER, m.OWN_CLUSTER)],
        services=[m.CART],
    )
    own = m.own_listener_model()
    assert _bytes_of(translate(replace(own, envoy_configs=(config,)))) == _bytes_of(translate(own))


def _bytes_of(translation: Any) -> dict[str, dict[str, bytes]]:
    return {
        url: {name: encode(message) for name, message in named.items()}
        for url, named in translation.resources.items()
    }


def test_shared_port_without_original_destinations_warns_the_policy_owners() -> None:
    shared = m.shared_listener_model()
    translation = translate(shared)  # no original destinations: one proxy port for both
    [warning] = translation.warnings
    assert warning.ref == m.POLICY_REF and "cannot tell them apart" in warning.reason
    assert translate(shared, TranslateOptions(use_original_dst=True)).warnings == ()


def test_a_translator_bug_costs_one_config_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: resolving the canary's Service references blows up."""
    translator = Translator()
    good = translator.translate(m.canary_model())
    other = m.envoy_config(CCEC, [(ROUTE, _route("default/httpbin-v1"))])
    real = configs_module.config_output

    def broken(parsed: Any, services: Any) -> Any:
        if parsed.config.ref == m.CEC_REF:
            raise KeyError("injected")
        return real(parsed, services)

    monkeypatch.setattr(configs_module, "config_output", broken)
    route = copy.deepcopy(m.ARTICLE_ROUTE)
    route["virtual_hosts"][0]["domains"] = ["httpbin", "httpbin.default"]
    model = replace(m.canary_model(version="v2"), envoy_configs=(m.canary_config(route), other))
    with structlog.testing.capture_logs() as logs:
        translation = translator.translate(model)
    assert any(e["event"] == "envoy_config_internal_error" for e in logs)
    [error] = translation.errors
    assert error.ref == m.CEC_REF and error.kept_previous and "injected" in error.reason
    name = "default/httpbin-traffic-split/httpbin-listener-route"
    assert translation.resources[ROUTE][name] is good.resources[ROUTE][name]
    assert "mirror/r" in translation.resources[ROUTE]


def test_empty_model_gives_all_four_types_empty() -> None:
    translation = translate(MeshModel(version="empty", generation=0))
    assert set(translation.resources) == set(RESOURCE_TYPES)
    assert all(not named for named in translation.resources.values())
    assert translation.errors == () and translation.model_version == "empty"
