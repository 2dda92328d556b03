"""Envoy's field constraints (protoc-gen-validate rules) checked before Envoy
sees a resource: the validator names the field, and a real Envoy agrees that
each of these resources is unacceptable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nodemesh.xds.translate import CLUSTER, ROUTE, validate_envoy_config
from nodemesh.xds.translate.constraints import check_constraints
from tests.xds.translate.envoy_static import envoy_validate
from tests.xds.translate.translate_cases import CASES
from tests.xds.translate.translate_models import CEC_REF, envoy_config

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _route(**vhost: Any) -> dict[str, Any]:
    host = {
        "name": "vh",
        "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "default/a"}}],
    }
    host.update(vhost)
    return {"name": "r", "virtual_hosts": [host]}


BAD = {
    "empty domains": (ROUTE, _route(domains=[]), "virtual_hosts[0].domains"),
    "route without action": (
        ROUTE,
        _route(routes=[{"match": {"prefix": "/"}}]),
        "virtual_hosts[0].routes[0]",
    ),
    "negative connect timeout": (
        CLUSTER,
        {"name": "c", "type": "STATIC", "connect_timeout": "-1s"},
        "connect_timeout",
    ),
    "undefined enum name": (
        ROUTE,
        _route(
            routes=[
                {
                    "match": {"prefix": "/"},
                    "route": {"cluster": "default/a", "priority": "NO_SUCH_PRIORITY"},
                }
            ]
        ),
        None,  # an undefined enum name does not even parse: a parse error
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_validator_names_the_broken_field(case: str) -> None:
    type_url, body, where = BAD[case]
    [error] = validate_envoy_config(envoy_config(CEC_REF, [(type_url, body)]))
    assert error.field == (f"spec.resources[0].{where}" if where else "spec.resources[0]")


def _bootstrap(type_url: str, body: dict[str, Any]) -> dict[str, Any]:
    if type_url == CLUSTER:
        return {"static_resources": {"clusters": [body]}}
    manager = {
        "@type": HCM + "HttpConnectionManager",
        "stat_prefix": "t",
        "route_config": body,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    cluster = {"name": "default/a", "type": "STATIC", "connect_timeout": "1s"}
    return {"static_resources": {"listeners": [listener], "clusters": [cluster]}}


@pytest.mark.envoy
@pytest.mark.parametrize("case", [c for c in sorted(BAD) if BAD[c][2] is not None])
def test_real_envoy_rejects_them_too(case: str, tmp_path: Path) -> None:
    type_url, body, _ = BAD[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_bootstrap(type_url, body)))
    assert envoy_validate(path).returncode != 0
    # ...and accepts the same bootstrap once the field is fixed.
    good = _route() if type_url == ROUTE else body | {"connect_timeout": "1s"}
    path.write_text(json.dumps(_bootstrap(type_url, good)))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_resources_break_no_constraint(case: str) -> None:
    translation = CASES[case]()
    for named in translation.resources.values():
        for name, message in named.items():
            assert list(check_constraints(message)) == [], name
