"""HTTPRoute/GRPCRoute/ReferenceGrant parsing against the vendored CRDs' rules.

The parser's constants are read back from the CRDs (enums, bounds, list
limits), and each CEL rule the parser implements is checked both ways: an
object breaking it is rejected with the CRD's own message, and the message is
the CRD's (so the two cannot drift apart silently)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.model import parse_gateway as pg
from nodemesh.model.errors import ParseError
from nodemesh.model.parse import parse_object
from nodemesh.model.routes import ReferenceGrant, Route, ValueMatch

CRDS = Path(__file__).resolve().parents[2] / "deploy" / "crds"


@functools.cache
def crd_text(plural: str) -> str:
    return (CRDS / f"gateway.networking.k8s.io_{plural}.yaml").read_text()


@functools.cache
def schema(plural: str, version: str = "v1") -> Any:
    crd = yaml.safe_load(crd_text(plural))
    found = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    return found["schema"]["openAPIV3Schema"]["properties"]["spec"]


def rule_schema(plural: str = "httproutes") -> Any:
    return schema(plural)["properties"]["rules"]["items"]["properties"]


def route(rules: list[Any], kind: str = "HTTPRoute", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": "r", "namespace": "shop"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "cart", "port": 80}],
            "rules": rules,
            **spec,
        },
    }


def backend(name: str = "cart", **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": 80, **extra}


def parsed(raw: dict[str, Any]) -> Route:
    obj = parse_object(raw).obj
    assert isinstance(obj, Route)
    return obj


def rejected(raw: dict[str, Any]) -> ParseError:
    with pytest.raises(ParseError) as caught:
        parse_object(raw)
    return caught.value


# --- the constants are the CRDs' ---------------------------------------------


def test_enums_are_the_crds() -> None:
    rule = rule_schema()
    assert tuple(rule["filters"]["items"]["properties"]["type"]["enum"]) == pg.HTTP_FILTERS
    grpc = rule_schema("grpcroutes")
    assert set(grpc["filters"]["items"]["properties"]["type"]["enum"]) == set(pg.GRPC_FILTERS)
    match = rule["matches"]["items"]["properties"]
    assert tuple(match["path"]["properties"]["type"]["enum"]) == pg.PATH_TYPES
    assert tuple(match["headers"]["items"]["properties"]["type"]["enum"]) == pg.VALUE_TYPES
    assert tuple(match["method"]["enum"]) == pg.METHODS
    redirect = rule["filters"]["items"]["properties"]["requestRedirect"]["properties"]
    assert tuple(redirect["statusCode"]["enum"]) == pg.REDIRECT_CODES
    assert tuple(redirect["scheme"]["enum"]) == pg.SCHEMES


def test_bounds_are_the_crds() -> None:
    rule = rule_schema()
    weight = rule["backendRefs"]["items"]["properties"]["weight"]
    assert (weight["minimum"], weight["maximum"]) == (0, pg.MAX_WEIGHT)
    assert schema("httproutes")["properties"]["rules"]["maxItems"] == pg.MAX_RULES
    assert schema("httproutes")["properties"]["parentRefs"]["maxItems"] == pg.MAX_PARENTS
    assert rule["matches"]["maxItems"] == pg.MAX_MATCHES
    assert rule["filters"]["maxItems"] == pg.MAX_FILTERS
    assert rule["backendRefs"]["maxItems"] == pg.MAX_BACKENDS
    assert rule["matches"]["items"]["properties"]["headers"]["maxItems"] == pg.MAX_HEADERS


# --- CEL rules: rejected with the CRD's message ------------------------------

CEL_CASES = [
    (
        [{"backendRefs": [{"name": "cart"}]}],
        "Must have port for Service reference",
    ),
    (
        [
            {
                "filters": [
                    {"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}},
                ],
                "backendRefs": [backend()],
            }
        ],
        "RequestRedirect filter must not be used together with backendRefs",
    ),
    (
        [
            {
                "matches": [{"path": {"type": "Exact", "value": "/a"}}],
                "filters": [
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {
                            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}
                        },
                    }
                ],
            }
        ],
        "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix",
    ),
    (
        [{"matches": [{"path": {"type": "PathPrefix", "value": "a"}}]}],
        "value must be an absolute path and start with '/'",
    ),
    (
        [{"matches": [{"path": {"type": "Exact", "value": "/a//b"}}]}],
        "must not contain '//'",
    ),
    (
        [{"timeouts": {"request": "1s", "backendRequest": "2s"}}],
        "backendRequest timeout cannot be longer than request timeout",
    ),
    (
        [
            {
                "filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {}},
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {}},
                ]
            }
        ],
        "RequestHeaderModifier filter cannot be repeated",
    ),
    (
        [
            {
                "filters": [
                    {
                        "type": "RequestMirror",
                        "requestMirror": {
                            "backendRef": backend(),
                            "fraction": {"numerator": 3, "denominator": 2},
                        },
                    }
                ]
            }
        ],
        "numerator must be less than or equal to denominator",
    ),
]


@pytest.mark.parametrize(("rules", "message"), CEL_CASES)
def test_cel_rule_rejects_with_the_crds_message(rules: list[Any], message: str) -> None:
    error = rejected(route(rules))
    assert message in error.reason
    # The message is the CRD's, give or take YAML's line folding.
    assert " ".join(message.split()[:6]) in " ".join(crd_text("httproutes").split())


# --- OpenAPI rules ------------------------------------------------------------

OPENAPI_CASES = [
    ({"filters": [{"type": "Rewrite"}]}, "rules[0].filters[0].type", "Unsupported value"),
    ({"backendRefs": [backend(weight=1_000_001)]}, "rules[0].backendRefs[0].weight", "range"),
    ({"backendRefs": [backend(weight=-1)]}, "rules[0].backendRefs[0].weight", "range"),
    ({"backendRefs": [backend(port=70000)]}, "rules[0].backendRefs[0].port", "range"),
    ({"matches": [{"method": "FETCH"}]}, "rules[0].matches[0].method", "Unsupported value"),
    (
        {"matches": [{"headers": [{"name": "bad header", "value": "x"}]}]},
        "rules[0].matches[0].headers[0].name",
        "not a valid name",
    ),
    ({"timeouts": {"request": "1 second"}}, "rules[0].timeouts.request", "duration"),
]


@pytest.mark.parametrize(("rule", "field", "reason"), OPENAPI_CASES)
def test_openapi_rule_rejects_naming_the_field(rule: Any, field: str, reason: str) -> None:
    error = rejected(route([rule]))
    assert error.field == f"spec.{field}" and reason in error.reason


def test_unknown_filter_type_in_a_grpcroute() -> None:
    error = rejected(route([{"filters": [{"type": "URLRewrite", "urlRewrite": {}}]}], "GRPCRoute"))
    assert error.field == "spec.rules[0].filters[0].type"


# --- what a valid route becomes ----------------------------------------------


def test_defaults_applied() -> None:
    parsed_route = parsed(route([{"backendRefs": [backend()]}]))
    [rule] = parsed_route.rules
    assert rule.matches[0].path == ValueMatch("PathPrefix", "/")
    assert rule.backends[0].weight == 1 and rule.backends[0].namespace == "shop"
    assert parsed_route.parents[0].kind == "Service" and parsed_route.parents[0].group == ""


def test_parent_without_group_is_a_gateway() -> None:
    raw = route([])
    raw["spec"]["parentRefs"] = [{"name": "gw"}]
    parent = parsed(raw).parents[0]
    assert (parent.group, parent.kind) == (pg.GROUP, "Gateway")


def test_grpc_method_match_becomes_a_path() -> None:
    raw = route([{"matches": [{"method": {"service": "echo.Echo", "method": "Say"}}]}], "GRPCRoute")
    [rule] = parsed(raw).rules
    assert rule.matches[0].path == ValueMatch("Exact", "/echo.Echo/Say")
    raw = route([{"matches": [{"method": {"service": "echo.Echo"}}]}], "GRPCRoute")
    assert parsed(raw).rules[0].matches[0].path == ValueMatch(
        "RegularExpression", r"/(echo\.Echo)/([^/]+)"
    )


def test_timeouts_in_milliseconds() -> None:
    [rule] = parsed(route([{"timeouts": {"request": "1m2s", "backendRequest": "500ms"}}])).rules
    assert (rule.request_timeout_ms, rule.backend_timeout_ms) == (62_000, 500)


def test_reference_grant() -> None:
    raw: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "g", "namespace": "backends"},
        "spec": {
            "from": [{"group": pg.GROUP, "kind": "HTTPRoute", "namespace": "shop"}],
            "to": [{"group": "", "kind": "Service"}],
        },
    }
    grant = parse_object(raw).obj
    assert isinstance(grant, ReferenceGrant)
    broken = copy.deepcopy(raw)
    del broken["spec"]["to"][0]["group"]
    assert rejected(broken).field == "spec.to[0].group"
