"""The agent's flow gRPC server: Envoy's access logs in (ALS, on a Unix
socket), the Observer service out (GetFlows, ServerStatus).

The ALS stream is taken as raw bytes, not decoded by gRPC: a message gRPC
could not decode would end Envoy's whole stream, while here it is counted
and skipped (`FlowCollector.access_log_message`). The Observer's handlers are
registered by hand (this repository generates message code only).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from nodemesh._gen.nodemesh.v1 import flow_pb2, observer_pb2
from nodemesh.flows import filters
from nodemesh.flows.collector import FlowCollector
from nodemesh.flows.ring import Lost

log = structlog.get_logger(__name__)

ALS_METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
OBSERVER = "nodemesh.v1.Observer"


@dataclass(frozen=True, slots=True)
class FlowServerSettings:
    """`als_socket`: the Unix socket Envoy streams access logs to;
    `observer_address`: where `nodemesh observe` connects ("unix:PATH" or
    "host:port"; port 0 picks one)."""

    als_socket: Path | None = None
    observer_address: str | None = "unix:/var/run/nodemesh/observer.sock"


async def _als(collector: FlowCollector, requests: AsyncIterator[bytes], _: Any) -> bytes:
    async for raw in requests:
        collector.access_log_message(raw)
    return bytes(als_pb2.StreamAccessLogsResponse().SerializeToString())


def _time(flow: flow_pb2.Flow) -> int:
    return int(flow.time.seconds) * 1_000_000_000 + int(flow.time.nanos)


def _selected(
    collector: FlowCollector, request: observer_pb2.GetFlowsRequest
) -> list[flow_pb2.Flow]:
    passes = filters.predicate(request.whitelist, request.blacklist)
    since = _time_of(request.since) if request.HasField("since") else None
    until = _time_of(request.until) if request.HasField("until") else None
    chosen = [
        f
        for f in collector.ring.recent()
        if (since is None or _time(f) >= since) and (until is None or _time(f) <= until)
        if passes(f)
    ]
    if request.number:
        n = int(request.number)
        chosen = chosen[:n] if request.first else chosen[-n:]
    return chosen


def _time_of(stamp: Timestamp) -> int:
    return int(stamp.seconds) * 1_000_000_000 + int(stamp.nanos)


def _response(collector: FlowCollector, flow: flow_pb2.Flow) -> bytes:
    response = observer_pb2.GetFlowsResponse(node_name=collector.options.node_name)
    response.flow.CopyFrom(flow)
    response.time.CopyFrom(flow.time)
    return bytes(response.SerializeToString())


def _lost(collector: FlowCollector, count: int) -> bytes:
    response = observer_pb2.GetFlowsResponse(node_name=collector.options.node_name)
    response.lost_events.source = flow_pb2.LostEvent.HUBBLE_RING_BUFFER
    response.lost_events.num_events_lost = count
    response.time.GetCurrentTime()
    return bytes(response.SerializeToString())


async def get_flows(
    collector: FlowCollector, request: observer_pb2.GetFlowsRequest, context: Any
) -> AsyncIterator[bytes]:
    try:
        filters.check([*request.whitelist, *request.blacklist])
    except filters.FilterError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    await _warn_unknown(collector, [*request.whitelist, *request.blacklist], context)
    # Register, then read the ring, with no await between: every flow is
    # either in `held` or reaches the follower, never both, never neither.
    with collector.ring.follow() as follower:
        held = _selected(collector, request)
        for flow in held:
            yield _response(collector, flow)
        if not request.follow:
            return
        passes = filters.predicate(request.whitelist, request.blacklist)
        until = _time_of(request.until) if request.HasField("until") else None
        while True:
            item = await follower.get()
            if isinstance(item, Lost):
                yield _lost(collector, item.count)
                continue
            if until is not None and _time(item) > until:
                return
            if passes(item):
                yield _response(collector, item)


WARNING_KEY = "nodemesh-warning"


async def _warn_unknown(
    collector: FlowCollector, flow_filters: list[observer_pb2.FlowFilter], context: Any
) -> None:
    """A filter naming a pod the model does not know matches nothing; say so
    (initial metadata, so a follower hears it at once; `nodemesh observe`
    prints it as a warning)."""
    patterns = [p for f in flow_filters for p in (*f.source_pod, *f.destination_pod)]
    unknown = collector.resolver().unknown_pods(patterns)
    if unknown:
        text = f"no pod known to the model matches {', '.join(unknown)}"
        await context.send_initial_metadata(((WARNING_KEY, text),))


def server_status(collector: FlowCollector) -> observer_pb2.ServerStatusResponse:
    ring = collector.ring
    return observer_pb2.ServerStatusResponse(
        num_flows=len(ring),
        max_flows=ring.capacity,
        seen_flows=ring.seen,
        uptime_ns=time.monotonic_ns() - ring.started_ns,
        lost_kernel_events=collector.lost_kernel_events,
        lost_malformed_access_logs=collector.malformed_access_logs,
        lost_follower_events=ring.lost_by_followers,
        sampled_out=collector.sampled_out,
        followers=ring.followers,
    )


def handlers(collector: FlowCollector) -> list[grpc.GenericRpcHandler]:
    async def als(requests: AsyncIterator[bytes], context: Any) -> bytes:
        return await _als(collector, requests, context)

    async def flows(request: observer_pb2.GetFlowsRequest, context: Any) -> AsyncIterator[bytes]:
        # grpc.aio needs the handler itself to be an async generator function.
        async for response in get_flows(collector, request, context):
            yield response

    async def status(_: observer_pb2.ServerStatusRequest, __: Any) -> bytes:
        return bytes(server_status(collector).SerializeToString())

    als_handler = grpc.method_handlers_generic_handler(
        "envoy.service.accesslog.v3.AccessLogService",
        {"StreamAccessLogs": grpc.stream_unary_rpc_method_handler(als)},
    )
    observer = grpc.method_handlers_generic_handler(
        OBSERVER,
        {
            "GetFlows": grpc.unary_stream_rpc_method_handler(
                flows, request_deserializer=observer_pb2.GetFlowsRequest.FromString
            ),
            "ServerStatus": grpc.unary_unary_rpc_method_handler(
                status, request_deserializer=observer_pb2.ServerStatusRequest.FromString
            ),
        },
    )
    return [als_handler, observer]


def _unlink_stale(path: Path) -> None:
    """A socket left by a previous run would make the bind fail."""
    if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
        path.unlink()


class FlowServer:
    """One grpc.aio server for both: ALS on its Unix socket, the Observer on
    `observer_address`."""

    def __init__(self, collector: FlowCollector, settings: FlowServerSettings) -> None:
        self.collector = collector
        self.settings = settings
        self.observer_port: int | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(handlers(self.collector))
        socket = self.settings.als_socket
        if socket is not None:
            _unlink_stale(socket)
            server.add_insecure_port(f"unix:{socket}")
        address = self.settings.observer_address
        if address is not None:
            if address.startswith("unix:"):
                _unlink_stale(Path(address.removeprefix("unix:").removeprefix("//")))
            self.observer_port = server.add_insecure_port(address)
        await server.start()
        if socket is not None:
            os.chmod(socket, 0o660)
        self._server = server
        log.info("flow_server_started", als=str(socket), observer=address)

    @property
    def observer_target(self) -> str:
        address = self.settings.observer_address or ""
        if address.startswith("unix:") or self.observer_port is None:
            return address
        return f"{address.rpartition(':')[0]}:{self.observer_port}"

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
