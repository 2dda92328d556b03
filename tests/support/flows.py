"""Builders for flow tests: Envoy access-log entries as Envoy sends them, a
model with a client pod and the canary's two versions, and an Observer client
over real gRPC."""

from __future__ import annotations

from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

from nodemesh._gen.nodemesh.v1 import flow_pb2, observer_pb2
from nodemesh.model.objects import Kind, ObjectRef, Pod, ServiceName, pairs
from nodemesh.model.snapshot import MeshModel
from tests.support.factory import backend, mesh_model, service

CLIENT_IP = "10.0.1.5"
V1 = ("10.0.2.1", 8080)
V2 = ("10.0.2.2", 8080)


def canary_model() -> MeshModel:
    """A curl pod, and httpbin-v1 / httpbin-v2 each with one backend pod."""
    curl = Pod(ObjectRef(Kind.POD, "default", "curl-1"), pairs({"app": "curl"}), (CLIENT_IP,), "n")
    backends = {
        ServiceName("default", "httpbin-v1"): {80: (backend(*V1, pod="httpbin-v1-a"),)},
        ServiceName("default", "httpbin-v2"): {80: (backend(*V2, pod="httpbin-v2-a"),)},
    }
    return mesh_model([service("httpbin-v1", 80), service("httpbin-v2", 80)], backends, pods=[curl])


def http_entry(
    upstream: tuple[str, int] = V1,
    *,
    cluster: str = "default/httpbin-v1",
    code: int = 200,
    path: str = "/headers",
    source: str = CLIENT_IP,
    latency_ms: int = 3,
) -> accesslog_pb2.HTTPAccessLogEntry:
    entry = accesslog_pb2.HTTPAccessLogEntry(protocol_version=2)
    common = entry.common_properties
    common.downstream_remote_address.socket_address.address = source
    common.downstream_remote_address.socket_address.port_value = 40000
    common.upstream_remote_address.socket_address.address = upstream[0]
    common.upstream_remote_address.socket_address.port_value = upstream[1]
    common.upstream_cluster = cluster
    common.start_time.GetCurrentTime()
    common.time_to_last_downstream_tx_byte.FromMilliseconds(latency_ms)
    entry.request.request_method = base_pb2.GET
    entry.request.path = path
    entry.response.response_code.value = code
    return entry


def als_message(*entries: accesslog_pb2.HTTPAccessLogEntry) -> bytes:
    message = als_pb2.StreamAccessLogsMessage()
    message.identifier.log_name = "nodemesh"
    message.http_logs.log_entry.extend(entries)
    return bytes(message.SerializeToString())


def flow(path: str = "/x", code: int = 200) -> flow_pb2.Flow:
    """A bare L7 flow (for ring tests that never resolve addresses)."""
    made = flow_pb2.Flow(Type=flow_pb2.L7, verdict=flow_pb2.FORWARDED)
    made.l7.http.url, made.l7.http.code = path, code
    made.time.GetCurrentTime()
    return made


def get_flows(channel: grpc.aio.Channel) -> Any:
    return channel.unary_stream(
        "/nodemesh.v1.Observer/GetFlows",
        request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
        response_deserializer=observer_pb2.GetFlowsResponse.FromString,
    )


def stream_access_logs(channel: grpc.aio.Channel) -> Any:
    """The ALS method taking raw bytes, so a test can send what no encoder would."""
    return channel.stream_unary(
        "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
        request_serializer=lambda raw: raw,
        response_deserializer=als_pb2.StreamAccessLogsResponse.FromString,
    )
