"""Envoy configs for bench/datapath.py: the app and the proxies.

Every proxy, node Envoy and sidecars alike, gets the same minimal HTTP
connection manager (router only, no access log, default stats), so the paths
differ in how many proxies they cross, not in what each proxy does.
"""

from __future__ import annotations

from typing import Any

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _hcm(name: str, route: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": name,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, **route}],
                    }
                ]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
        },
    }


def _listener(name: str, port: int, route: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filters": [_hcm(name, route)]}],
    }


def _cluster(name: str, ip: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": ip, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


def app_config(ports: tuple[int, ...]) -> dict[str, Any]:
    """The app: one listener per port, each answering 200 itself."""
    ok = {"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
    return {"static_resources": {"listeners": [_listener(f"app{p}", p, ok) for p in ports]}}


def proxy_config(hops: list[tuple[str, int, str, int]]) -> dict[str, Any]:
    """One HTTP listener per hop: (name, listen port, upstream ip, upstream port)."""
    return {
        "static_resources": {
            "listeners": [_listener(n, port, {"route": {"cluster": n}}) for n, port, _, _ in hops],
            "clusters": [_cluster(n, ip, up) for n, _, ip, up in hops],
        }
    }
