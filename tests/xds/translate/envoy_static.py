"""A translation as a static Envoy bootstrap, so a real Envoy can judge it
without an xDS server: EDS clusters get their ClusterLoadAssignment inline,
and HTTP connection managers get their RDS RouteConfiguration inline.
Everything else is exactly what the translator produced.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from nodemesh.node.envoy_process import find_envoy_binary
from nodemesh.xds.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE, Translation
from nodemesh.xds.translate.references import HCM_TYPE
from nodemesh.xds.translate.registry import TYPE_PREFIX, pack, unpack

ENVOY = Path(find_envoy_binary())


def _static_cluster(cluster: cluster_pb2.Cluster, translation: Translation) -> cluster_pb2.Cluster:
    copy = cluster_pb2.Cluster()
    copy.CopyFrom(cluster)
    if copy.type == cluster_pb2.Cluster.EDS:
        name = copy.eds_cluster_config.service_name or copy.name
        copy.ClearField("eds_cluster_config")
        copy.type = cluster_pb2.Cluster.STATIC
        # Over ADS, an EDS cluster whose assignment never comes only warms
        # (no NACK); statically, that is a cluster with no endpoints.
        assignment = translation.resources[ENDPOINT].get(name)
        if assignment is None:
            copy.load_assignment.cluster_name = name
        else:
            copy.load_assignment.CopyFrom(assignment)
    return copy


def _inline_routes(
    listener: listener_pb2.Listener, translation: Translation
) -> listener_pb2.Listener:
    copy = listener_pb2.Listener()
    copy.CopyFrom(listener)
    for chain in copy.filter_chains:
        for network_filter in chain.filters:
            if network_filter.typed_config.type_url != HCM_TYPE:
                continue
            manager = unpack(network_filter.typed_config)
            assert isinstance(manager, hcm_pb2.HttpConnectionManager)
            if manager.HasField("rds"):
                route = translation.resources[ROUTE][manager.rds.route_config_name]
                manager.ClearField("rds")
                manager.route_config.CopyFrom(route)
            network_filter.typed_config.CopyFrom(pack(manager))
    return copy


def static_bootstrap(translation: Translation, admin_port: int = 0) -> bootstrap_pb2.Bootstrap:
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.id = "translate-test"
    bootstrap.node.cluster = "nodemesh"
    if admin_port:
        socket = bootstrap.admin.address.socket_address
        socket.address, socket.port_value = "127.0.0.1", admin_port
    # What the node Envoy holds: its wildcard LDS/CDS leave out what is
    # served to proxyless gRPC clients by name only.
    envoy_gets = translation.wildcard_resources()
    for cluster in envoy_gets[CLUSTER].values():
        bootstrap.static_resources.clusters.append(_static_cluster(cluster, translation))
    for listener in envoy_gets[LISTENER].values():
        bootstrap.static_resources.listeners.append(_inline_routes(listener, translation))
    return bootstrap


def write_bootstrap(bootstrap: bootstrap_pb2.Bootstrap, path: Path) -> Path:
    path.write_text(json_format.MessageToJson(bootstrap))
    return path


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    """Envoy's own verdict on a config file (`--mode validate` loads everything
    a real start would, without binding or connecting)."""
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def resource_bootstrap(type_url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One CEC-style resource alone in a static bootstrap (a route config is
    served inline by a listener; clusters "default/a" and "default/b" exist)."""
    clusters = [
        {"name": name, "type": "STATIC", "connect_timeout": "1s"}
        for name in ("default/a", "default/b")
    ]
    if type_url == CLUSTER:
        return {"static_resources": {"clusters": [body]}}
    manager = {
        "@type": HCM_TYPE,
        "stat_prefix": "t",
        "route_config": body,
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": TYPE_PREFIX + "envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
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
    return {"static_resources": {"listeners": [listener], "clusters": clusters}}


def envoy_verdict(bootstrap: dict[str, Any], path: Path) -> tuple[bool, str]:
    """(accepted, Envoy's last words) for a bootstrap given as JSON-ready data."""
    path.write_text(json.dumps(bootstrap))
    result = envoy_validate(path)
    lines = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode == 0, "\n".join(lines[-3:])
