"""The access log every steered HTTP listener streams to the node agent (gRPC ALS).

Each HTTP connection manager of a redirect listener gets an
`envoy.access_loggers.http_grpc` logger whose gRPC service is the cluster
`nodemesh_als`, a static cluster whose one endpoint is the agent's Unix
socket. Envoy buffers entries and streams them; when the agent is down the
logger drops entries and counts them in its own stats
(`access_logs.grpc_access_log.logs_dropped`), and requests are served as
before: access logging never sits on the request path.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from nodemesh.xds.translate.references import edit_http_managers
from nodemesh.xds.translate.registry import pack, unpack

ALS_CLUSTER = "nodemesh_als"
ALS_LOG_NAME = "nodemesh"
HTTP_GRPC_LOGGER = "envoy.access_loggers.http_grpc"
# Envoy flushes a logger's buffer every interval or when it holds this many
# bytes. 250 ms keeps `observe --follow` live without a message per request.
FLUSH_INTERVAL_MS = 250
BUFFER_BYTES = 16384


def access_log() -> accesslog_pb2.AccessLog:
    """The ALS logger one connection manager carries."""
    config = als_pb2.HttpGrpcAccessLogConfig()
    common = config.common_config
    common.log_name = ALS_LOG_NAME
    common.transport_api_version = config_source_pb2.V3
    common.grpc_service.envoy_grpc.cluster_name = ALS_CLUSTER
    common.buffer_flush_interval.FromMilliseconds(FLUSH_INTERVAL_MS)
    common.buffer_size_bytes.value = BUFFER_BYTES
    return accesslog_pb2.AccessLog(name=HTTP_GRPC_LOGGER, typed_config=pack(config))


def als_cluster(socket_path: str) -> cluster_pb2.Cluster:
    """The static cluster of the agent's ALS socket (HTTP/2: gRPC)."""
    cluster = cluster_pb2.Cluster(name=ALS_CLUSTER, type=cluster_pb2.Cluster.STATIC)
    cluster.connect_timeout.FromMilliseconds(1000)
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].CopyFrom(pack(options))
    assignment = cluster.load_assignment
    assignment.cluster_name = ALS_CLUSTER
    endpoint = assignment.endpoints.add().lb_endpoints.add().endpoint
    endpoint.address.pipe.path = socket_path
    return cluster


def add_to_manager(manager: hcm_pb2.HttpConnectionManager) -> None:
    """Append the ALS logger unless the manager has one to the same cluster (in place)."""
    for existing in manager.access_log:
        if existing.name == HTTP_GRPC_LOGGER:
            config = unpack(existing.typed_config)
            if (
                isinstance(config, als_pb2.HttpGrpcAccessLogConfig)
                and config.common_config.grpc_service.envoy_grpc.cluster_name == ALS_CLUSTER
            ):
                return
    manager.access_log.append(access_log())


def with_access_log(listener: listener_pb2.Listener) -> None:
    """Give every HTTP connection manager of a (CEC's) listener the ALS logger, in place.
    The CEC's own loggers stay: nodemesh's is added beside them."""
    edit_http_managers(listener, add_to_manager)
