"""Mesh models built by hand from the model's frozen types, for translator tests.

Each model is what the model builder would publish for the manifests named in
its docstring; building them directly keeps these tests independent of the
parser and the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nodemesh.model.objects import (
    EnvoyConfig,
    HTTPPolicy,
    HTTPRule,
    Kind,
    L7Redirect,
    LabelSelector,
    ObjectRef,
    RedirectOrigin,
    Service,
    ServiceName,
    ServicePort,
    pairs,
)
from nodemesh.model.snapshot import BackendAddress, MeshModel
from nodemesh.xds.translate.registry import CLUSTER, LISTENER, ROUTE
from tests.support import factory

DEFAULT = "default"
CEC_REF = ObjectRef(Kind.ENVOY_CONFIG, DEFAULT, "httpbin-traffic-split")
CNP_REF = ObjectRef(Kind.NETWORK_POLICY, DEFAULT, "httpbin-l7-policy")
CURL = LabelSelector(match_labels=pairs({"app": "curl"}))


# The builders live in the shared factory; these names are the module's API
# for the translator tests (m.service, m.backend, m.model, m.envoy_config).
service = factory.service
backend = factory.backend
envoy_config = factory.envoy_config
model = factory.mesh_model


# --- the article's canary (examples/canary) --------------------------------

ARTICLE_ROUTE: dict[str, Any] = {
    "name": "httpbin-listener-route",
    "virtual_hosts": [
        {
            "name": "httpbin-vh",
            "domains": ["httpbin"],
            "routes": [
                {
                    "match": {"prefix": "/"},
                    "route": {
                        "weighted_clusters": {
                            "clusters": [
                                {"name": "default/httpbin-v1", "weight": 90},
                                {"name": "default/httpbin-v2", "weight": 10},
                            ],
                            "total_weight": 100,
                        }
                    },
                }
            ],
        }
    ],
}

HTTPBIN = ServiceName(DEFAULT, "httpbin")
V1 = ServiceName(DEFAULT, "httpbin-v1")
V2 = ServiceName(DEFAULT, "httpbin-v2")
CANARY_SERVICES = (
    service("httpbin", 80),
    service("httpbin-v1", 80, ip="10.96.0.11"),
    service("httpbin-v2", 80, ip="10.96.0.12"),
)
CANARY_BACKENDS: dict[ServiceName, dict[int, tuple[BackendAddress, ...]]] = {
    HTTPBIN: {80: (backend("127.0.0.1", 18081), backend("127.0.0.1", 18082))},
    V1: {80: (backend("127.0.0.1", 18081),)},
    V2: {80: (backend("127.0.0.1", 18082),)},
}


def canary_config(route: Mapping[str, Any] = ARTICLE_ROUTE) -> EnvoyConfig:
    return envoy_config(CEC_REF, [(ROUTE, route)], services=[HTTPBIN])


def canary_redirect(client_ips: tuple[str, ...] = (), proxy_port: int = 15001) -> L7Redirect:
    return L7Redirect(
        service=HTTPBIN,
        port=80,
        protocol="TCP",
        proxy_port=proxy_port,
        listener="default/httpbin-traffic-split/listener",
        route_config="default/httpbin-traffic-split/httpbin-listener-route",
        origin=RedirectOrigin.ENVOY_CONFIG,
        owners=(CEC_REF, CNP_REF),
        clients=None,
        policies=(HTTPPolicy(CNP_REF, CURL, client_ips, (HTTPRule(),)),),
    )


def canary_model(route: Mapping[str, Any] = ARTICLE_ROUTE, version: str = "v1") -> MeshModel:
    """examples/canary: httpbin-deployment.yaml, traffic-split.yaml, local-backends.yaml."""
    return model(
        CANARY_SERVICES,
        CANARY_BACKENDS,
        configs=[canary_config(route)],
        redirects=[canary_redirect()],
        version=version,
    )


# --- a CNP with path and method rules, no CEC ------------------------------

API = ServiceName(DEFAULT, "api")
POLICY_REF = ObjectRef(Kind.NETWORK_POLICY, DEFAULT, "api-readonly")
ADMIN_REF = ObjectRef(Kind.NETWORK_POLICY, DEFAULT, "api-admin")


def policy_redirect(
    rules: tuple[HTTPRule, ...], client_ips: tuple[str, ...], proxy_port: int = 15002
) -> L7Redirect:
    """rules.http of two policies on api:8080: `rules` for the frontend pods and
    an admin policy allowing everything for the admin pod."""
    frontend = LabelSelector(match_labels=pairs({"app": "frontend"}))
    admin = LabelSelector(match_labels=pairs({"app": "admin"}))
    return L7Redirect(
        service=API,
        port=8080,
        protocol="TCP",
        proxy_port=proxy_port,
        listener="nodemesh/l7/default/api/8080",
        route_config="nodemesh/l7/default/api/8080",
        origin=RedirectOrigin.NETWORK_POLICY,
        owners=(ADMIN_REF, POLICY_REF),
        clients=(frontend, admin),
        policies=(
            HTTPPolicy(ADMIN_REF, admin, ("10.0.0.9",), (HTTPRule(),)),
            HTTPPolicy(POLICY_REF, frontend, client_ips, rules),
        ),
    )


READONLY_RULES = (
    HTTPRule(method="GET", path="/public/.*"),
    HTTPRule(method="GET|HEAD", path="/status", headers=("X-Probe", "X-Env: prod")),
)


def policy_model(
    rules: tuple[HTTPRule, ...] = READONLY_RULES,
    client_ips: tuple[str, ...] = ("10.0.0.5", "10.0.0.6"),
) -> MeshModel:
    api = service("api", 8080, ip="10.96.0.20")
    return model(
        [api],
        {API: {8080: (backend("10.0.1.1", 8080), backend("10.0.1.2", 8080, ready=False))}},
        redirects=[policy_redirect(rules, client_ips)],
    )


# --- a CEC bringing its own listener and cluster ---------------------------

OWN_REF = ObjectRef(Kind.ENVOY_CONFIG, "shop", "edge")
CART = ServiceName("shop", "cart")

OWN_LISTENER: dict[str, Any] = {
    "name": "edge-listener",
    "filter_chains": [
        {
            "filters": [
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                        "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "edge",
                        "rds": {"route_config_name": "edge-routes"},
                        "http_filters": [
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {
                                    "@type": "type.googleapis.com/"
                                    "envoy.extensions.filters.http.router.v3.Router"
                                },
                            }
                        ],
                    },
                }
            ]
        }
    ],
}
OWN_ROUTE: dict[str, Any] = {
    "name": "edge-routes",
    "virtual_hosts": [
        {
            "name": "cart",
            "domains": ["*"],
            "routes": [
                {"match": {"prefix": "/legacy"}, "route": {"cluster": "legacy"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "shop/cart:http"}},
            ],
        }
    ],
}
OWN_CLUSTER: dict[str, Any] = {
    "name": "legacy",
    "connect_timeout": "2s",
    "type": "STATIC",
    "load_assignment": {
        "cluster_name": "legacy",
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": "127.0.0.1", "port_value": 19000}
                            }
                        }
                    }
                ]
            }
        ],
    },
}


def own_listener_model() -> MeshModel:
    """A CEC in namespace shop with its own listener, route and static cluster,
    redirecting shop/cart (two ports; routes name the http one)."""
    cart = Service(
        ref=ObjectRef(Kind.SERVICE, "shop", "cart"),
        cluster_ips=("10.96.0.30",),
        ports=(ServicePort("http", 80, "TCP", 8080), ServicePort("grpc", 9090, "TCP", 9090)),
        selector=pairs({"app": "cart"}),
    )
    config = envoy_config(
        OWN_REF,
        [(LISTENER, OWN_LISTENER), (ROUTE, OWN_ROUTE), (CLUSTER, OWN_CLUSTER)],
        services=[CART],
    )
    redirect = L7Redirect(
        service=CART,
        port=80,
        protocol="TCP",
        proxy_port=15003,
        listener="shop/edge/edge-listener",
        route_config="shop/edge/edge-routes",
        origin=RedirectOrigin.ENVOY_CONFIG,
        owners=(OWN_REF,),
        clients=None,
    )
    return model(
        [cart],
        {CART: {80: (backend("10.0.2.1", 8080),), 9090: (backend("10.0.2.1", 9090),)}},
        configs=[config],
        redirects=[redirect],
    )


# --- one CEC listener serving two services, original destinations ----------

WEB = ServiceName("shop", "web")


def shared_listener_model() -> MeshModel:
    """The shop/edge CEC redirects shop/cart and shop/web to its one listener
    (one proxy port, as the model allocates per listener); a network policy
    restricts the frontend pods' requests to shop/web. With original
    destinations restored, the RBAC rules are tied to each Service's VIP:port."""
    base = own_listener_model()
    web = Service(
        ref=ObjectRef(Kind.SERVICE, "shop", "web"),
        cluster_ips=("10.96.0.31",),
        ports=(ServicePort("http", 80, "TCP", 8080),),
        selector=pairs({"app": "web"}),
    )
    frontend = LabelSelector(match_labels=pairs({"app": "frontend"}))
    policy = HTTPPolicy(POLICY_REF, frontend, ("10.0.0.5",), (HTTPRule(method="GET"),))
    cart_redirect = base.redirects[0]
    web_redirect = L7Redirect(
        service=WEB,
        port=80,
        protocol="TCP",
        proxy_port=cart_redirect.proxy_port,
        listener=cart_redirect.listener,
        route_config=cart_redirect.route_config,
        origin=RedirectOrigin.ENVOY_CONFIG,
        owners=(OWN_REF, POLICY_REF),
        clients=None,
        policies=(policy,),
    )
    return model(
        [*base.services.values(), web],
        {**base.backends, WEB: {80: (backend("10.0.4.1", 8080),)}},
        configs=base.envoy_configs,
        redirects=[cart_redirect, web_redirect],
    )


# --- Cilium's pattern: a CEC cluster named after a Service, own settings ---


def backend_cluster_model() -> MeshModel:
    """The canary CEC, with its own EDS cluster "default/httpbin-v1" (least
    request, a circuit breaker) as in Cilium's examples with backendServices:
    the route uses the CEC's cluster, which reads the Service's endpoints."""
    cluster = {
        "name": "default/httpbin-v1",
        "type": "EDS",
        "connect_timeout": "3s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [{"max_connections": 64}]},
    }
    config = envoy_config(CEC_REF, [(ROUTE, ARTICLE_ROUTE), (CLUSTER, cluster)], services=[HTTPBIN])
    return model(CANARY_SERVICES, CANARY_BACKENDS, configs=[config], redirects=[canary_redirect()])
