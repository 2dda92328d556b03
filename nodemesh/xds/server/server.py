"""The grpc.aio server: ADS (SotW and delta) and CSDS on TCP and/or a Unix
domain socket, optional TLS/mTLS on TCP, two-stage graceful shutdown.

Unknown type URLs: a request whose type_url is not a
`type.googleapis.com/<message>` URL is malformed and ends the stream with
INVALID_ARGUMENT (the protocol lets the server close the stream). A
well-formed type URL the server holds no resources for is served as an empty
type (names asked for are sent if they ever appear), because Envoy may ask
over ADS for types this control plane does not produce (SDS, for example)
and must not lose its whole stream for it.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2_grpc
from google.protobuf.message import Message

from nodemesh.xds.cache import SnapshotSource
from nodemesh.xds.server import uds as uds_socket
from nodemesh.xds.server.callbacks import CallbackSet, XdsCallbacks, XdsMetricsRecorder
from nodemesh.xds.server.delta import DeltaStream
from nodemesh.xds.server.errors import ServerConfigError, XdsServerError, grpc_status_for
from nodemesh.xds.server.memory import HeapTrimmer
from nodemesh.xds.server.sotw import SotwStream
from nodemesh.xds.server.status import ClientStatus, frozen_types, type_status
from nodemesh.xds.server.stream import AdsStream, StreamSettings
from nodemesh.xds.server.tls import (
    TlsSettings,
    front_context,
    optional_client_cert,
    server_credentials,
)
from nodemesh.xds.server.tls_front import TlsFront
from nodemesh.xds.vocab import DEFAULT_XDS_ADDRESS

log = structlog.get_logger("nodemesh.xds.server")

_ADS = "envoy.service.discovery.v3.AggregatedDiscoveryService"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Where and how to listen. `tcp_address` is host:port (port 0 picks a
    free port, see `AdsServer.tcp_port`); `uds_path` is the node-local socket
    Envoy uses, created with mode `uds_mode`."""

    tcp_address: str | None = DEFAULT_XDS_ADDRESS
    uds_path: Path | None = None
    uds_mode: int = 0o660
    tls: TlsSettings | None = None
    stream: StreamSettings = field(default_factory=StreamSettings)
    shutdown_grace: float = 5.0
    max_receive_message_bytes: int = 16 * 1024 * 1024
    # Ping idle connections so a peer that vanished without a FIN (a frozen
    # or partitioned Envoy) frees its streams instead of lingering forever.
    keepalive_seconds: float | None = 60.0
    keepalive_timeout_seconds: float = 20.0
    # The shortest interval at which a client may ping without data before
    # gRPC counts a strike (two strikes: GOAWAY "too_many_pings"). gRPC's
    # default is 5 min; the shipped bootstrap (envoy/bootstrap.yaml) pings
    # every 30 s with 15 % jitter, so an idle Envoy was cut off every 2-3 min.
    # Must stay below that interval (tests/xds/server/test_ads_keepalive.py).
    client_ping_min_interval_seconds: float = 10.0
    # Streams gRPC core has accepted but grpc.aio has not yet handed to a
    # handler. grpc.aio asks core for one call at a time, so a burst of new
    # streams (every Envoy reconnecting after a restart) queues in core.
    # Core's own default drops queued calls at random beyond 1,000 and all
    # beyond 3,000, silently: the client sees CANCELLED, or INTERNAL on its
    # next write, and nothing is logged. That made 10,000 streams never sync
    # (docs/benchmarks.md, "Why 10,000 streams never synced").
    max_pending_streams: int = 65_536
    # How long such a stream may wait; core cancels it after that, as
    # silently, and it only comes back as a reconnect at the end of the
    # queue. gRPC's default is 30 s; taking in 10,000 streams on a loaded
    # machine can take longer.
    max_pending_seconds: int = 300


def _passthrough(payload: bytes) -> bytes:
    # Responses are spliced from pre-encoded resource bytes; gRPC sends them as is.
    return payload


class AdsServer:
    """ADS + CSDS server over one snapshot source."""

    def __init__(
        self,
        source: SnapshotSource,
        settings: ServerSettings | None = None,
        callbacks: Iterable[XdsCallbacks] = (),
    ) -> None:
        self.source = source
        self.settings = settings or ServerSettings()
        # Metrics first, then the caller's subscribers (see callbacks.py).
        self.callbacks = CallbackSet([XdsMetricsRecorder(), *callbacks])
        self.tcp_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._streams: dict[int, AdsStream] = {}
        self._trimmer = HeapTrimmer()
        self._draining = False
        self._socket: uds_socket.BoundSocket | None = None
        self._front: TlsFront | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Bind every configured address and start serving."""
        if self.settings.tcp_address is None and self.settings.uds_path is None:
            raise ServerConfigError("xDS server needs a tcp_address or a uds_path")
        tls = self.settings.tls
        # Checked before anything is bound: a bad key is named as such, not
        # reported as "cannot listen".
        credentials = server_credentials(tls) if tls is not None else None
        if tls is not None and optional_client_cert(tls):
            self._front = TlsFront(front_context(tls))
        server = grpc.aio.server(options=self._grpc_options())
        # csds.py reads this package's status views; importing it here, not
        # at module level, keeps that dependency one-way at import time.
        from nodemesh.xds.csds import CsdsService

        server.add_generic_rpc_handlers((self._ads_handler(),))
        csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(
            CsdsService(self.clients), server
        )
        tcp = self.settings.tcp_address
        if tcp is not None and self._front is None:
            self.tcp_port = self._bind_tcp(server, tcp, credentials)
        elif tcp is not None and self._front is not None:
            _probe_tcp(tcp)
            _bind_unix(server, self._front.backend, f"xDS TLS front {tcp!r}")
        uds = self.settings.uds_path
        if uds is not None:
            uds_socket.prepare(uds)
            _bind_unix(server, uds_socket.private_path(uds), f"xDS socket {str(uds)!r}")
        await server.start()
        try:
            if uds is not None:
                self._socket = uds_socket.BoundSocket.publish(uds)
                os.chmod(uds, self.settings.uds_mode)
            if tcp is not None and self._front is not None:
                host, _, port = tcp.rpartition(":")
                self.tcp_port = await self._front.start(host.strip("[]"), int(port))
        except ServerConfigError:
            await server.stop(None)
            await self._close_front()
            raise
        self._server = server
        log.info("xds_server_started", tcp_port=self.tcp_port, uds=str(uds) if uds else None)

    def _grpc_options(self) -> list[tuple[str, int]]:
        options = [
            ("grpc.max_receive_message_length", self.settings.max_receive_message_bytes),
            ("grpc.so_reuseport", 0),
            # Soft limit = hard limit: no random early drop below it.
            ("grpc.server.max_pending_requests", self.settings.max_pending_streams),
            ("grpc.server.max_pending_requests_hard_limit", self.settings.max_pending_streams),
            ("grpc.server_max_unrequested_time_in_server", self.settings.max_pending_seconds),
        ]
        if self.settings.keepalive_seconds is not None:
            options += [
                ("grpc.keepalive_time_ms", int(self.settings.keepalive_seconds * 1000)),
                ("grpc.keepalive_timeout_ms", int(self.settings.keepalive_timeout_seconds * 1000)),
                # gRPC core times pings out by this one too (1 min by default)
                ("grpc.http2.ping_timeout_ms", int(self.settings.keepalive_timeout_seconds * 1000)),
                # idle ADS streams carry no data for hours: keep pinging anyway
                ("grpc.http2.max_pings_without_data", 0),
            ]
        options += [
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                int(self.settings.client_ping_min_interval_seconds * 1000),
            ),
            # Envoy keeps pinging between streams too (after a stream ends).
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        return options

    @staticmethod
    def _bind_tcp(
        server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
    ) -> int:
        _probe_tcp(address)
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ServerConfigError(f"cannot listen on {address!r}: {exc}") from exc
        if not port:
            raise ServerConfigError(f"cannot listen on {address!r}")
        return int(port)

    async def stop(self, grace: float | None = None) -> None:
        """Two-stage shutdown: stop accepting and ask every stream to finish
        (they end with OK, so clients reconnect elsewhere), then give
        in-flight work `grace` seconds before gRPC cancels what is left."""
        if self._server is None:
            return
        self._draining = True
        if self._front is not None:
            self._front.stop_accepting()
        grace = self.settings.shutdown_grace if grace is None else grace
        stopping = asyncio.create_task(self._server.stop(grace), name="xds-server-stop")
        for stream in list(self._streams.values()):
            stream.stop()
        await stopping
        await self._close_front()
        self._server = None
        if self._socket is not None:
            self._socket.remove()  # only the socket this server created
            self._socket = None
        log.info("xds_server_stopped")

    async def _close_front(self) -> None:
        if self._front is not None:
            await self._front.close()
            self._front = None

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    def subscribe(self, subscriber: XdsCallbacks) -> None:
        """Add a callbacks subscriber (streams already open report to it from now on)."""
        self.callbacks.add(subscriber)

    # -- read-only status API ----------------------------------------------------

    def clients(self) -> list[ClientStatus]:
        """Every connected stream that has identified its node."""
        out: list[ClientStatus] = []
        for stream in list(self._streams.values()):
            if stream.node is None:
                continue
            snapshot = self.source.snapshot(stream.node_key)
            types = {t: type_status(s, snapshot) for t, s in sorted(stream.states.items())}
            out.append(
                ClientStatus(
                    stream_id=stream.stream_id,
                    api=stream.api,
                    node_id=stream.node.id,
                    cluster=stream.node.cluster,
                    node_key=stream.node_key,
                    peer=stream.peer,
                    connected_at=stream.connected_at,
                    snapshot_label=snapshot.label if snapshot is not None else None,
                    node=stream.node,
                    types=frozen_types(types),
                )
            )
        return out

    def acked_names(self, node_id: str, type_url: str) -> frozenset[str] | None:
        """Names of `type_url` resources a client `node_id` holds (has ACKed
        some version of), over its streams; None when none is connected."""
        streams = [s for s in list(self._streams.values()) if s.node and s.node.id == node_id]
        if not streams:
            return None
        names: set[str] = set()
        for stream in streams:
            state = stream.states.get(type_url)
            if state is not None:
                names.update(state.acked)
        return frozenset(names)

    def config_dump(
        self, node_key: str, type_url: str | None = None
    ) -> Mapping[str, Mapping[str, Message]]:
        """What the server serves `node_key`, by type URL and name (shared
        messages: do not modify): everything but the resources served by name
        only, and of those the ones its streams ask for."""
        snapshot = self.source.snapshot(node_key)
        if snapshot is None:
            return {}
        types = [type_url] if type_url is not None else sorted(snapshot.resources)
        asked = {t: set[str]() for t in types}
        for stream in self._streams.values():
            if stream.node_key == node_key:
                for t, state in stream.states.items():
                    asked.get(t, set()).update(state.names)
        return {t: {n: r.message for n, r in snapshot.served(t, asked[t]).items()} for t in types}

    # -- gRPC plumbing -------------------------------------------------------------

    def _ads_handler(self) -> grpc.GenericRpcHandler:
        async def sotw(requests: AsyncIterator[Any], context: Any) -> None:
            await self._serve(SotwStream, requests, context)

        async def delta(requests: AsyncIterator[Any], context: Any) -> None:
            await self._serve(DeltaStream, requests, context)

        return grpc.method_handlers_generic_handler(
            _ADS,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    sotw,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=_passthrough,
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    delta,
                    request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                    response_serializer=_passthrough,
                ),
            },
        )

    async def _serve(
        self, stream_type: type[AdsStream], requests: AsyncIterator[Any], context: Any
    ) -> None:
        """Run one stream; the one place where errors become gRPC statuses."""
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "xDS server is shutting down")
        stream = stream_type(self.source, self.settings.stream, self.callbacks, context)
        self._streams[stream.stream_id] = stream
        try:
            await stream.run(requests)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:
            raise  # an abort already chose the status; gRPC unwinds with it
        except grpc.aio.BaseError as exc:
            # gRPC's own call failed under the stream: the client reset or
            # left while a message was in flight, and gRPC fails that
            # operation before it cancels this handler. A transport event,
            # not a server fault, and there is nobody to send a status to.
            self._streams.pop(stream.stream_id, None)
            stream.log.warning("xds_stream_transport_error", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            self._streams.pop(stream.stream_id, None)
            code, message = grpc_status_for(exc)
            if isinstance(exc, XdsServerError):
                stream.log.warning("xds_stream_refused", code=code.name, error=message)
            else:
                stream.log.exception("xds_stream_failed")
            try:
                await asyncio.wait_for(
                    context.abort(code, message), self.settings.stream.send_timeout
                )
            except TimeoutError:
                # The status is queued behind responses a client never read;
                # it gets it if it ever reads again. Do not wait for that.
                raise exc from None
        finally:
            self._streams.pop(stream.stream_id, None)
            self._trimmer.stream_closed(stream.held_names)


def _probe_tcp(address: str) -> None:
    """Refuse an address gRPC could not bind, with the OS's reason, before
    gRPC tries (it logs a multi-line error and says only "Failed to bind")."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ServerConfigError(f"cannot listen on {address!r}: expected host:port")
    if int(port_text) == 0:
        return
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, int(port_text), type=socket.SOCK_STREAM
        )[0]
    except socket.gaierror as exc:
        raise ServerConfigError(f"cannot listen on {address!r}: {exc.strerror}") from exc
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise ServerConfigError(f"cannot listen on {address!r}: {exc.strerror}") from exc


def _bind_unix(server: grpc.aio.Server, path: Path, what: str) -> None:
    try:
        bound = server.add_insecure_port(f"unix:{path}")
    except RuntimeError as exc:
        raise ServerConfigError(f"{what}: cannot listen: {exc}") from exc
    if not bound:
        raise ServerConfigError(f"{what}: cannot listen")
