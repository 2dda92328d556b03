"""The shared parser on CiliumEnvoyConfig and CiliumNetworkPolicy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.model.errors import ParseError
from nodemesh.model.objects import (
    EnvoyConfig,
    HeaderMatch,
    HTTPRule,
    Kind,
    NetworkPolicy,
    ObjectRef,
    PortProtocol,
    ServiceName,
)
from nodemesh.model.parse import parse_object
from tests.support import factory

CANARY = Path(__file__).resolve().parents[2] / "examples" / "canary"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def canary(kind: str) -> dict[str, Any]:
    docs = yaml.safe_load_all((CANARY / "traffic-split.yaml").read_text())
    found: dict[str, Any] = next(d for d in docs if d["kind"] == kind)
    return found


def cec(resources: list[Any], services: list[Any] | None = None, **meta: Any) -> dict[str, Any]:
    services = services or [{"name": "web"}]
    return factory.cec("split", "shop", services=services, resources=resources, **meta)


def error_of(raw: Any) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_object(raw)
    return info.value


def test_article_cec_parses_with_total_weight_warning() -> None:
    result = parse_object(canary("CiliumEnvoyConfig"))
    config = result.obj
    assert isinstance(config, EnvoyConfig)
    assert config.ref == ObjectRef(Kind.ENVOY_CONFIG, "default", "httpbin-traffic-split")
    assert [s.service for s in config.services] == [ServiceName("default", "httpbin")]
    (res,) = config.resources
    assert (res.type_url, res.name, res.field) == (
        ROUTE,
        "httpbin-listener-route",
        "spec.resources[0]",
    )
    body = json.loads(res.body)
    assert "@type" not in body
    # Kept as written (snake_case): the translator's protobuf JSON parser reads both.
    clusters = body["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]["clusters"]
    assert [c["weight"] for c in clusters] == [90, 10]
    (warning,) = result.warnings
    assert warning.ref == config.ref
    assert warning.field == (
        "spec.resources[0].virtual_hosts[0].routes[0].route.weighted_clusters.total_weight"
    )
    assert "deprecated" in warning.reason


def test_camel_case_total_weight_is_found_too() -> None:
    route = {
        "@type": ROUTE,
        "name": "r",
        "virtualHosts": [{"routes": [{"route": {"weightedClusters": {"totalWeight": 10}}}]}],
    }
    (warning,) = parse_object(cec([route])).warnings
    assert warning.field.endswith("virtualHosts[0].routes[0].route.weightedClusters.totalWeight")


def test_resource_body_is_canonical_json() -> None:
    one = parse_object(cec([{"@type": ROUTE, "name": "r", "b": 1, "a": [2]}])).obj
    two = parse_object(cec([{"a": [2], "name": "r", "b": 1, "@type": ROUTE}])).obj
    assert one == two


@pytest.mark.parametrize(
    ("resources", "field", "words"),
    [
        ([{"@type": ROUTE}], "spec.resources[0].name", "is required"),
        ([{"@type": ROUTE, "name": "a"}, {"@type": ROUTE}], "spec.resources[1].name", "required"),
        ([{"name": "r"}], "spec.resources[0].@type", "is required"),
        ([{"@type": "RouteConfiguration", "name": "r"}], "spec.resources[0].@type", "type URL"),
        (
            [{"@type": ROUTE, "name": "r"}, {"@type": ROUTE, "name": "r"}],
            "spec.resources[1].name",
            "spec.resources[0]",
        ),
        (["text"], "spec.resources[0]", "must be a mapping"),
    ],
)
def test_cec_resource_errors(resources: list[Any], field: str, words: str) -> None:
    err = error_of(cec(resources))
    assert err.ref == ObjectRef(Kind.ENVOY_CONFIG, "shop", "split")
    assert err.field == field
    assert words in err.reason


def test_cec_listener_choice() -> None:
    two = [{"@type": LISTENER, "name": "a"}, {"@type": LISTENER, "name": "b"}]
    err = error_of(cec(two))
    assert err.field == "spec.services[0].listener" and "several" in err.reason
    err = error_of(cec(two, [{"name": "web", "listener": "c"}]))
    assert err.field == "spec.services[0].listener" and "'c'" in err.reason
    ok = parse_object(cec(two, [{"name": "web", "listener": "b", "ports": [80]}])).obj
    assert isinstance(ok, EnvoyConfig)
    assert ok.services[0].listener == "b" and ok.services[0].ports == (80,)
    assert ok.services[0].service == ServiceName("shop", "web")
    err = error_of(cec([], [{"name": "web", "ports": ["80"]}]))
    assert err.field == "spec.services[0].ports[0]"


def test_clusterwide_config_needs_service_namespace() -> None:
    raw = cec([])
    raw["kind"] = "CiliumClusterwideEnvoyConfig"
    err = error_of(raw)
    assert err.ref == ObjectRef(Kind.CLUSTERWIDE_ENVOY_CONFIG, "", "split")
    assert err.field == "spec.services[0].namespace"


def test_creation_timestamp_from_yaml_datetime_or_string() -> None:
    as_text = yaml.safe_load("creationTimestamp: '2024-05-01T10:00:00Z'")
    as_datetime = yaml.safe_load("creationTimestamp: 2024-05-01T10:00:00Z")
    configs = [parse_object(cec([], **m)).obj for m in (as_text, as_datetime)]
    assert [c.creation_timestamp for c in configs if isinstance(c, EnvoyConfig)] == [
        "2024-05-01T10:00:00Z"
    ] * 2


def test_article_cnp() -> None:
    policy = parse_object(canary("CiliumNetworkPolicy")).obj
    assert isinstance(policy, NetworkPolicy)
    assert policy.endpoint_selector.matches({"app": "curl"})
    (rule,) = policy.egress
    assert rule.to_services == (ServiceName("default", "httpbin"),)
    assert rule.http == (HTTPRule(),) and rule.http[0].allows_everything


def cnp(egress: list[Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "curl"}}, "egress": egress, **spec},
    }


def test_cnp_cilium_schema_to_ports_rules() -> None:
    rule = {
        "toServices": [{"k8sService": {"serviceName": "web"}}],
        "toPorts": [
            {
                "ports": [{"port": "8080", "protocol": "TCP"}],
                "rules": {
                    "http": [
                        {
                            "method": "GET",
                            "path": "/public/.*",
                            "headers": ["X-Test: 1"],
                            "headerMatches": [{"name": "X-Id", "mismatch": "LOG"}],
                        }
                    ]
                },
            }
        ],
    }
    result = parse_object(cnp([rule], ingress=[{}]))
    policy = result.obj
    assert isinstance(policy, NetworkPolicy)
    (egress,) = policy.egress
    assert egress.to_services == (ServiceName("shop", "web"),)
    assert egress.to_ports == (PortProtocol(8080, "TCP"),)
    assert egress.http == (
        HTTPRule("GET", "/public/.*", None, ("X-Test: 1",), (HeaderMatch("X-Id", None, "LOG"),)),
    )
    # ingress is L3/L4 policy now (enforced in the kernel), not a warning.
    assert result.warnings == ()
    assert policy.rules is not None and policy.rules.enforce_ingress


@pytest.mark.parametrize(
    ("egress", "field"),
    [
        ([{"toServices": [{}]}], "spec.egress[0].toServices[0].k8sService"),
        (
            [{"toServices": [{"k8sService": {}}]}],
            "spec.egress[0].toServices[0].k8sService.serviceName",
        ),
        (
            [
                {
                    "toServices": [{"k8sService": {"serviceName": "w"}}],
                    "rules": {"http": [{"path": "("}]},
                }
            ],
            "spec.egress[0].rules.http[0].path",
        ),
        (
            [{"toServices": [{"k8sService": {"serviceName": "w"}}], "rules": {"http": []}}],
            "spec.egress[0].rules.http",
        ),
        (
            [
                {
                    "toServices": [{"k8sService": {"serviceName": "w"}}],
                    "toPorts": [{"ports": [{"port": "http"}]}],
                }
            ],
            "spec.egress[0].toPorts[0].ports[0].port",
        ),
    ],
)
def test_cnp_errors(egress: list[Any], field: str) -> None:
    err = error_of(cnp(egress))
    assert err.ref == ObjectRef(Kind.NETWORK_POLICY, "shop", "p")
    assert err.field == field


def test_cnp_without_selector_and_ignored_parts() -> None:
    raw = cnp([])
    del raw["spec"]["endpointSelector"]
    assert error_of(raw).field == "spec.endpointSelector"
    result = parse_object(cnp([{"toEndpoints": [{}]}]))
    # No L7 part; the L3/L4 rule is modeled (parse_policy), so no warning.
    assert isinstance(result.obj, NetworkPolicy) and result.obj.egress == ()
    assert result.warnings == ()
    assert result.obj.rules is not None and len(result.obj.rules.egress) == 1


def test_cec_without_resources_or_services() -> None:
    raw = cec([])
    del raw["spec"]["resources"]
    config = parse_object(raw).obj
    assert isinstance(config, EnvoyConfig) and config.resources == ()
    del raw["spec"]["services"]
    config = parse_object(raw).obj
    assert isinstance(config, EnvoyConfig) and config.services == ()
    del raw["spec"]
    assert error_of(raw).field == "spec"
