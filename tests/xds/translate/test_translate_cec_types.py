"""Every `@type` docs/translation.md lists for CiliumEnvoyConfig resources,
written as a user writes them (YAML through the file source and the model
store), reaches the translation under its qualified name, and the real Envoy
accepts the result. A ClusterLoadAssignment names itself by `cluster_name`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource
from nodemesh.xds.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE, translate
from nodemesh.xds.translate import validate_envoy_config as validate
from tests.xds.translate.envoy_static import envoy_validate, static_bootstrap, write_bootstrap

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
}

SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "echo", "namespace": "default"},
    "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80, "protocol": "TCP"}]},
}


def cec(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEnvoyConfig",
        "metadata": {"name": "typed", "namespace": "default"},
        "spec": {"services": [{"name": "echo", "namespace": "default"}], "resources": resources},
    }


LISTENER_BODY = {
    "@type": T + "envoy.config.listener.v3.Listener",
    "name": "l",
    "filter_chains": [
        {
            "filters": [
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": HCM,
                        "stat_prefix": "typed",
                        "rds": {"route_config_name": "r"},
                        "http_filters": [ROUTER],
                    },
                }
            ]
        }
    ],
}
ROUTE_BODY = {
    "@type": T + "envoy.config.route.v3.RouteConfiguration",
    "name": "r",
    "virtual_hosts": [
        {
            "name": "all",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
        }
    ],
}
CLUSTER_BODY = {
    "@type": T + "envoy.config.cluster.v3.Cluster",
    "name": "c",
    "type": "EDS",
    "connect_timeout": "1s",
    "eds_cluster_config": {"service_name": "c-endpoints"},
}


def assignment(key: str) -> dict[str, Any]:
    return {
        "@type": T + "envoy.config.endpoint.v3.ClusterLoadAssignment",
        key: "c-endpoints",
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": "127.0.0.1", "port_value": 18099}
                            }
                        }
                    }
                ]
            }
        ],
    }


def build(tmp_path: Path, resources: list[Any]) -> tuple[Any, Any]:
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all([SERVICE, cec(resources)]))
    store = MeshStore(validators=[validate])
    FileSource(tmp_path, store, source_name="test").load()
    model = store.build()
    return model, translate(model)


@pytest.mark.envoy
@pytest.mark.parametrize("key", ["cluster_name", "clusterName"])
def test_every_listed_type_translates_and_envoy_accepts_it(tmp_path: Path, key: str) -> None:
    body = [LISTENER_BODY, ROUTE_BODY, CLUSTER_BODY, assignment(key)]
    model, translation = build(tmp_path, body)
    assert model.errors == () and translation.errors == ()
    assert "default/typed/l" in translation.resources[LISTENER]
    assert "default/typed/r" in translation.resources[ROUTE]
    cluster = translation.resources[CLUSTER]["default/typed/c"]
    # The cluster reads the CEC's own assignment, under its qualified name.
    assert cluster.eds_cluster_config.service_name == "default/typed/c-endpoints"
    cla = translation.resources[ENDPOINT]["default/typed/c-endpoints"]
    assert cla.cluster_name == "default/typed/c-endpoints"
    assert cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 18099
    path = write_bootstrap(static_bootstrap(translation), tmp_path / "typed.json")
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_assignment_without_cluster_name_says_which_field(tmp_path: Path) -> None:
    body = assignment("cluster_name")
    del body["cluster_name"]
    model, _ = build(tmp_path, [ROUTE_BODY, CLUSTER_BODY, body])
    [error] = model.errors
    assert error.field == "spec.resources[2].cluster_name" and "required" in error.reason


def test_an_assignment_with_a_name_field_is_refused_by_the_type(tmp_path: Path) -> None:
    """`name` is not a ClusterLoadAssignment field: the parser says so."""
    body = {**assignment("cluster_name"), "name": "c-endpoints"}
    model, _ = build(tmp_path, [ROUTE_BODY, CLUSTER_BODY, body])
    [error] = model.errors
    assert error.field.startswith("spec.resources[2]") and "name" in error.reason
