"""validate_envoy_config: the admission check names the field and the reason."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from nodemesh.model.objects import ObjectError, ObjectRef
from nodemesh.xds.translate import CLUSTER, LISTENER, ROUTE, translate, validate_envoy_config
from tests.xds.translate import translate_models as m

RDS_PATH = "filter_chains[0].filters[0].typed_config.rds.route_config_name"
WEIGHTED = "virtual_hosts[0].routes[0].route.weighted_clusters"


def _errors(*resources: tuple[str, dict[str, Any]]) -> list[ObjectError]:
    return validate_envoy_config(m.envoy_config(m.CEC_REF, list(resources)))


def _route_with(**weighted: Any) -> dict[str, Any]:
    route = copy.deepcopy(m.ARTICLE_ROUTE)
    route["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"].update(weighted)
    return route


def test_article_config_is_valid() -> None:
    assert _errors((ROUTE, m.ARTICLE_ROUTE)) == []


def test_camel_case_is_accepted() -> None:
    route = {
        "name": "r",
        "virtualHosts": [
            {
                "name": "vh",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "default/a"}}],
            }
        ],
    }
    assert _errors((ROUTE, route)) == []


def test_unknown_type_names_the_field() -> None:
    [error] = _errors(
        (ROUTE, m.ARTICLE_ROUTE), ("type.googleapis.com/envoy.config.listener.v3.Listenr", {})
    )
    assert error.ref == m.CEC_REF
    assert error.field == "spec.resources[1].@type"
    assert "Listenr" in error.reason


def test_unknown_embedded_type_names_the_field() -> None:
    listener = copy.deepcopy(m.OWN_LISTENER)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0]["typed_config"]["@type"] = "type.googleapis.com/envoy.nope.v3.Filter"
    [error] = _errors((LISTENER, listener), (ROUTE, m.OWN_ROUTE), (CLUSTER, m.OWN_CLUSTER))
    assert error.field == (
        "spec.resources[0].filter_chains[0].filters[0].typed_config.http_filters[0]"
        ".typed_config.@type"
    )
    assert "envoy.nope.v3.Filter" in error.reason


def test_unknown_field_is_a_parse_error_naming_it() -> None:
    [error] = _errors((ROUTE, {"name": "r", "virtual_hostz": []}))
    assert error.field == "spec.resources[0]"
    assert "virtual_hostz" in error.reason


def test_total_weight_must_equal_the_sum() -> None:
    [error] = _errors((ROUTE, _route_with(total_weight=1000)))
    assert error.field == f"spec.resources[0].{WEIGHTED}.total_weight"
    assert "1000" in error.reason and "100" in error.reason


def test_weights_summing_to_zero_are_rejected() -> None:
    clusters = [{"name": "default/httpbin-v1", "weight": 0}]
    [error] = _errors((ROUTE, _route_with(clusters=clusters, total_weight=0)))
    assert error.field == f"spec.resources[0].{WEIGHTED}.clusters"


def test_rds_name_must_be_a_route_of_this_config() -> None:
    [error] = _errors((LISTENER, m.OWN_LISTENER))
    assert error.field == f"spec.resources[0].{RDS_PATH}"
    assert "edge-routes" in error.reason


def test_cluster_neither_local_nor_a_service() -> None:
    route = copy.deepcopy(m.OWN_ROUTE)
    [error] = _errors((ROUTE, route))  # "legacy" is not defined without its cluster
    assert error.field == "spec.resources[0].virtual_hosts[0].routes[0].route.cluster"
    assert "'legacy'" in error.reason


def test_duplicate_and_missing_names() -> None:
    errors = _errors(
        (CLUSTER, m.OWN_CLUSTER), (CLUSTER, m.OWN_CLUSTER), (ROUTE, {"virtual_hosts": []})
    )
    assert [e.field for e in errors] == ["spec.resources[1].name", "spec.resources[2].name"]


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '"text"'])
def test_body_that_is_not_a_json_object(body: str) -> None:
    config = m.envoy_config(m.CEC_REF, [(ROUTE, {"name": "r"})])
    broken = replace(config.resources[0], body=body)
    [error] = validate_envoy_config(replace(config, resources=(broken,)))
    assert error.field == "spec.resources[0]" and "JSON" in error.reason


@pytest.mark.parametrize("raw", ["default/a", "default/a:80", "default/a:http"])
def test_service_shaped_names_are_left_to_the_translator(raw: str) -> None:
    route = {
        "name": "r",
        "virtual_hosts": [
            {
                "name": "vh",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": raw}}],
            }
        ],
    }
    assert _errors((ROUTE, route)) == []


WEIRD_LISTENERS: list[Any] = [
    {"name": "x", "filter_chains": [{"filters": [{"name": "a", "typed_config": {}}]}]},
    {"name": 5},
    {"name": "x", "address": "nope"},
    {"name": "x", "filter_chains": "nope"},
    {"name": "x", "filter_chains": [{"filters": [{"name": "a", "typed_config": {"@type": 7}}]}]},
    {
        "name": "x",
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "rds": {},
                        },
                    }
                ]
            }
        ],
    },
]


@pytest.mark.parametrize("index", range(len(WEIRD_LISTENERS)))
def test_malformed_resources_are_errors_never_crashes(index: int) -> None:
    config = m.envoy_config(
        ObjectRef(m.CEC_REF.kind, "default", "weird"), [(LISTENER, WEIRD_LISTENERS[index])]
    )
    errors = validate_envoy_config(config)
    assert errors and all(e.field.startswith("spec.resources[0]") for e in errors)
    base = m.canary_model()
    translation = translate(replace(base, envoy_configs=(*base.envoy_configs, config)))
    assert {e.ref.name for e in translation.errors} == {"weird"}
    assert "default/httpbin-traffic-split/httpbin-listener-route" in translation.resources[ROUTE]


@pytest.mark.parametrize("order", [["rbac"], ["router", "rbac"], ["router", "router"]])
def test_router_must_be_the_last_http_filter(order: list[str]) -> None:
    types = {
        "router": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        "rbac": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
    }
    listener = copy.deepcopy(m.OWN_LISTENER)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [{"name": n, "typed_config": {"@type": types[n]}} for n in order]
    [error] = _errors((LISTENER, listener), (ROUTE, m.OWN_ROUTE), (CLUSTER, m.OWN_CLUSTER))
    assert error.field == "spec.resources[0].filter_chains[0].filters[0].typed_config.http_filters"


def test_filters_without_typed_config_are_named() -> None:
    listener = copy.deepcopy(m.OWN_LISTENER)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [{"name": "envoy.filters.http.router"}]
    errors = _errors((LISTENER, listener), (ROUTE, m.OWN_ROUTE), (CLUSTER, m.OWN_CLUSTER))
    assert errors[0].field == (
        "spec.resources[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"
    )
    assert "envoy.filters.http.router" in errors[0].reason
