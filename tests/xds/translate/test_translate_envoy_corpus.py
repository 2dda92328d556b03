"""Soundness against the real Envoy: a CEC the admission validator accepts
translates to resources Envoy accepts. A corpus of CECs using features users
reach for (route rewrites, retries, mirrors, header matching, cluster
tuning, health checks, upstream HTTP/2, inline routes, listener filters)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nodemesh.model.objects import Kind, ObjectRef
from nodemesh.xds.translate import CLUSTER, LISTENER, ROUTE, translate, validate_envoy_config
from tests.xds.translate import translate_models as m
from tests.xds.translate.envoy_static import envoy_validate, static_bootstrap, write_bootstrap

pytestmark = pytest.mark.envoy

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
}

ROUTE_FEATURES: dict[str, Any] = {
    "name": "features",
    "virtual_hosts": [
        {
            "name": "api",
            "domains": ["api", "api.default.svc.cluster.local"],
            "retry_policy": {"retry_on": "5xx,reset", "num_retries": 2},
            "routes": [
                {
                    "match": {"safe_regex": {"regex": "/v[0-9]+/items/.*"}},
                    "route": {
                        "cluster": "default/httpbin-v1",
                        "regex_rewrite": {"pattern": {"regex": "^/v[0-9]+"}, "substitution": ""},
                        "timeout": "2s",
                        "request_mirror_policies": [{"cluster": "default/httpbin-v2"}],
                    },
                },
                {
                    "match": {
                        "prefix": "/",
                        "headers": [{"name": "x-canary", "string_match": {"exact": "yes"}}],
                    },
                    "route": {"cluster": "default/httpbin-v2", "prefix_rewrite": "/"},
                    "request_headers_to_add": [
                        {"header": {"key": "x-routed-by", "value": "nodemesh"}}
                    ],
                },
                {"match": {"prefix": "/"}, "route": {"cluster": "default/httpbin-v1"}},
            ],
        }
    ],
}

TUNED_CLUSTER: dict[str, Any] = {
    "name": "default/httpbin-v1",
    "type": "EDS",
    "connect_timeout": "1s",
    "lb_policy": "RING_HASH",
    "outlier_detection": {"consecutive_5xx": 3, "interval": "5s", "base_ejection_time": "30s"},
    "health_checks": [
        {
            "timeout": "1s",
            "interval": "5s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "http_health_check": {"path": "/status/200"},
        }
    ],
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    },
}

INLINE_LISTENER: dict[str, Any] = {
    "name": "inline",
    "listener_filters": [
        {
            "name": "envoy.filters.listener.http_inspector",
            "typed_config": {
                "@type": T + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
            },
        }
    ],
    "filter_chains": [
        {
            "filters": [
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": HCM,
                        "stat_prefix": "inline",
                        "route_config": {
                            "name": "inline",
                            "virtual_hosts": [
                                {
                                    "name": "all",
                                    "domains": ["*"],
                                    "routes": [
                                        {
                                            "match": {"prefix": "/health"},
                                            "direct_response": {
                                                "status": 200,
                                                "body": {"inline_string": "ok"},
                                            },
                                        },
                                        {
                                            "match": {"prefix": "/"},
                                            "route": {"cluster": "default/httpbin-v2"},
                                        },
                                    ],
                                }
                            ],
                        },
                        "http_filters": [ROUTER],
                    },
                }
            ]
        }
    ],
}

CORPUS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "route features": [(ROUTE, ROUTE_FEATURES)],
    "tuned cluster for a Service": [(ROUTE, ROUTE_FEATURES), (CLUSTER, TUNED_CLUSTER)],
    "listener with inline routes": [(LISTENER, INLINE_LISTENER)],
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_accepted_config_is_accepted_by_envoy(case: str, tmp_path: Path) -> None:
    ref = ObjectRef(Kind.ENVOY_CONFIG, "default", "corpus")
    config = m.envoy_config(ref, CORPUS[case], services=[m.HTTPBIN])
    assert validate_envoy_config(config) == []
    first = CORPUS[case][0][1]
    name = f"default/corpus/{first['name']}"
    redirect = replace(
        m.canary_redirect(),
        listener=name if CORPUS[case][0][0] == LISTENER else "default/corpus/listener",
        route_config="" if CORPUS[case][0][0] == LISTENER else name,
        owners=(ref,),
    )
    model = m.model(m.CANARY_SERVICES, m.CANARY_BACKENDS, configs=[config], redirects=[redirect])
    translation = translate(model)
    assert translation.errors == ()
    path = write_bootstrap(static_bootstrap(translation), tmp_path / "corpus.json")
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
