"""Every feature of a GAMMA route, translated and loaded by the real Envoy.

One model holds routes using each match, filter and resilience field the
translator supports (the conformance cases in integration/gateway_api cover
the request -> response semantics); `envoy --mode validate` must accept the
whole translation, and the translation must report no error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2

from nodemesh.model.store import MeshStore
from nodemesh.xds.translate import ROUTE, translate
from nodemesh.xds.translate.constraints import check_constraints
from tests.support.protos import narrow
from tests.xds.translate.envoy_static import envoy_validate, static_bootstrap, write_bootstrap

pytestmark = pytest.mark.envoy

GROUP = "gateway.networking.k8s.io"


def service(name: str, namespace: str = "shop", app_protocol: str | None = None) -> dict[str, Any]:
    port: dict[str, Any] = {"name": "http", "port": 80}
    if app_protocol:
        port["appProtocol"] = app_protocol
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": f"10.96.1.{len(name)}", "ports": [port]},
    }


def route(
    name: str, rules: list[Any], kind: str = "HTTPRoute", namespace: str = "shop"
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "cart", "namespace": "shop"}],
            "rules": rules,
        },
    }


def to(name: str, weight: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": 80, "weight": weight, **extra}


EVERYTHING = [
    {
        "matches": [
            {"path": {"type": "Exact", "value": "/exact"}, "method": "POST"},
            {"path": {"type": "PathPrefix", "value": "/prefix/"}},
            {"path": {"type": "RegularExpression", "value": "/re/[a-z]+"}},
            {
                "headers": [
                    {"name": "X-Exact", "value": "v"},
                    {"type": "RegularExpression", "name": "X-Re", "value": "v[0-9]+"},
                ],
                "queryParams": [
                    {"name": "q", "value": "1"},
                    {"type": "RegularExpression", "name": "r", "value": "[a-z]+"},
                ],
            },
        ],
        "filters": [
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {
                    "set": [{"name": "X-Set", "value": "s"}],
                    "add": [{"name": "X-Add", "value": "a"}],
                    "remove": ["X-Remove"],
                },
            },
            {
                "type": "ResponseHeaderModifier",
                "responseHeaderModifier": {"set": [{"name": "X-Resp", "value": "r"}]},
            },
            {
                "type": "RequestMirror",
                "requestMirror": {"backendRef": to("cart-v2"), "percent": 25},
            },
            {
                "type": "RequestMirror",
                "requestMirror": {
                    "backendRef": to("cart-v2"),
                    "fraction": {"numerator": 1, "denominator": 3},
                },
            },
        ],
        "backendRefs": [
            to("cart-v1", 90),
            to(
                "cart-v2",
                10,
                filters=[
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"set": [{"name": "X-V2", "value": "1"}]},
                    }
                ],
            ),
            to("missing", 5),
        ],
        "timeouts": {"request": "10s", "backendRequest": "2s"},
        "retry": {"codes": [502, 503], "attempts": 3, "backoff": "100ms"},
    },
    {
        "matches": [{"path": {"type": "PathPrefix", "value": "/rewrite"}}],
        "filters": [
            {
                "type": "URLRewrite",
                "urlRewrite": {
                    "hostname": "elsewhere",
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"},
                },
            }
        ],
        "backendRefs": [to("cart-v1")],
        "timeouts": {"request": "0s"},
    },
    {
        "matches": [{"path": {"type": "PathPrefix", "value": "/full"}}],
        "filters": [
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/x"}},
            }
        ],
        "backendRefs": [to("cart-v1")],
    },
    {
        "matches": [{"path": {"type": "PathPrefix", "value": "/moved"}}],
        "filters": [
            {
                "type": "RequestRedirect",
                "requestRedirect": {
                    "scheme": "https",
                    "hostname": "example.org",
                    "statusCode": 308,
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"},
                },
            }
        ],
    },
    {
        "matches": [{"path": {"type": "PathPrefix", "value": "/ext"}}],
        "filters": [
            {"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "K", "name": "n"}}
        ],
        "backendRefs": [to("cart-v1")],
    },
    {
        "matches": [{"path": {"type": "PathPrefix", "value": "/zero"}}],
        "backendRefs": [to("cart-v1", 0)],
    },
]

GRPC = [
    {
        "matches": [
            {"method": {"service": "shop.Cart", "method": "Add"}},
            {"method": {"type": "RegularExpression", "service": "shop\\..*"}},
        ],
        "backendRefs": [to("cart-v1")],
    }
]


def test_every_route_feature_is_accepted_by_envoy(tmp_path: Path) -> None:
    store = MeshStore()
    for obj in (
        service("cart"),
        service("cart-v1"),
        service("cart-v2"),
        route("everything", EVERYTHING),
        route("grpc", GRPC, kind="GRPCRoute"),
        route("consumer", [{"backendRefs": [to("cart-v1", namespace="shop")]}], namespace="web"),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client", "namespace": "web"},
            "status": {"phase": "Running", "podIP": "10.0.0.7"},
        },
    ):
        store.apply("test", obj)
    model = store.build()
    translation = translate(model)
    assert translation.errors == ()
    # The node Envoy's routes (proxyless targets are served by name only).
    routes = translation.wildcard_resources()[ROUTE]
    assert set(routes) == {
        "nodemesh/gamma/shop/cart/80",
        "nodemesh/gamma/shop/cart/80/consumer/web",
    }
    # A proxyless gRPC client of cart gets the producer routes under its target.
    target = narrow(
        translation.resources[ROUTE]["cart.shop.svc.cluster.local:80"],
        route_pb2.RouteConfiguration,
    )
    producer = narrow(routes["nodemesh/gamma/shop/cart/80"], route_pb2.RouteConfiguration)
    assert [list(h.routes) for h in target.virtual_hosts] == [
        list(h.routes) for h in producer.virtual_hosts
    ]
    for name, config in routes.items():  # every protoc-gen-validate rule the checker knows
        assert list(check_constraints(config)) == [], name
    result = envoy_validate(write_bootstrap(static_bootstrap(translation), tmp_path / "gamma.json"))
    assert result.returncode == 0, result.stdout + result.stderr
