"""What the ADS server announces, in the shape of go-control-plane's
`server.Callbacks`: a stream opened or closed, a request received (ACK,
NACK with the client's `error_detail`, or a plain request) and a response
sent. Anything that follows the streams (metrics, `wait_synced`, the NACK
status reporter) subscribes here instead of polling `AdsServer.clients()`.

Contract for subscribers:
- callbacks run synchronously on the server's event loop, after the stream
  has applied the event to its own state, so `AdsServer.clients()` called
  from a callback already shows it; they must be cheap and never block;
- an exception in a subscriber is logged and dropped: it never ends a
  stream or reaches another subscriber;
- a stream is announced (`on_stream_open`) once its first request has named
  its node; a stream refused before that is never announced, and every
  announced stream gets exactly one `on_stream_closed`;
- the infos are frozen copies holding no client input beyond the node id,
  the type URL (bounded by `StreamSettings`) and the NACK message (truncated,
  see `truncate_detail`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import structlog

from nodemesh.xds import metrics
from nodemesh.xds.vocab import metric_label

log = structlog.get_logger("nodemesh.xds.server")


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """One ADS stream, as subscribers see it."""

    stream_id: int
    api: str  # "sotw" or "delta"
    peer: str
    node_id: str
    node_key: str
    cluster: str


class RequestKind(enum.Enum):
    REQUEST = "request"  # no response nonce: a first request or a subscription change
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"  # SotW: answers a superseded response, ignored by the protocol


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """One DiscoveryRequest or DeltaDiscoveryRequest, after the stream applied it."""

    type_url: str
    kind: RequestKind
    nonce: str
    # The version the answered response carried (ACK/NACK), else the one the
    # request reports.
    version_info: str
    error_detail: str | None = None  # NACK only: the client's message, truncated
    error_code: int = 0
    # ACK/NACK of a known response: seconds since that response was built.
    latency: float | None = None


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """One response written to the stream."""

    type_url: str
    version_info: str
    nonce: str
    resources: int
    removed: int
    bytes: int


class XdsCallbacks(Protocol):
    """Subscribe to stream events. Every method has a no-op default, so a
    subscriber that subclasses this protocol overrides only what it needs."""

    def on_stream_open(self, stream: StreamInfo) -> None:
        return None

    def on_stream_closed(self, stream: StreamInfo) -> None:
        return None

    def on_request(self, stream: StreamInfo, request: RequestInfo) -> None:
        return None

    def on_response(self, stream: StreamInfo, response: ResponseInfo) -> None:
        return None


class CallbackSet:
    """The subscribers of one server, called in the order they subscribed."""

    def __init__(self, subscribers: Iterable[XdsCallbacks] = ()) -> None:
        self._subscribers: list[XdsCallbacks] = list(subscribers)

    def add(self, subscriber: XdsCallbacks) -> None:
        self._subscribers.append(subscriber)

    def remove(self, subscriber: XdsCallbacks) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    def stream_open(self, stream: StreamInfo) -> None:
        for sub in list(self._subscribers):
            try:
                sub.on_stream_open(stream)
            except Exception:
                log.exception("xds_callback_failed", callback="on_stream_open")

    def stream_closed(self, stream: StreamInfo) -> None:
        for sub in list(self._subscribers):
            try:
                sub.on_stream_closed(stream)
            except Exception:
                log.exception("xds_callback_failed", callback="on_stream_closed")

    def request(self, stream: StreamInfo, request: RequestInfo) -> None:
        for sub in list(self._subscribers):
            try:
                sub.on_request(stream, request)
            except Exception:
                log.exception("xds_callback_failed", callback="on_request")

    def response(self, stream: StreamInfo, response: ResponseInfo) -> None:
        for sub in list(self._subscribers):
            try:
                sub.on_response(stream, response)
            except Exception:
                log.exception("xds_callback_failed", callback="on_response")


class XdsMetricsRecorder(XdsCallbacks):
    """The server's Prometheus metrics, recorded from its callbacks. Every
    `AdsServer` installs one first. Labels are bounded: the API name, and a
    known type's short name or `other`."""

    def __init__(self) -> None:
        # The labelled children, looked up once per type label: `labels()`
        # costs a lock and a tuple per call, and a change to 10,000 streams
        # records four samples per stream (bounded: one entry per label).
        self._by_type: dict[str, _TypeMetrics] = {}

    def _type_metrics(self, type_url: str) -> _TypeMetrics:
        label = metric_label(type_url)
        found = self._by_type.get(label)
        if found is None:
            found = self._by_type[label] = _TypeMetrics(label)
        return found

    def on_stream_open(self, stream: StreamInfo) -> None:
        metrics.CONNECTED_STREAMS.labels(api=stream.api).inc()

    def on_stream_closed(self, stream: StreamInfo) -> None:
        metrics.CONNECTED_STREAMS.labels(api=stream.api).dec()

    def on_request(self, stream: StreamInfo, request: RequestInfo) -> None:
        if request.kind is RequestKind.ACK:
            recorded = self._type_metrics(request.type_url)
            recorded.acks.inc()
            if request.latency is not None:
                recorded.push_to_ack.observe(request.latency)
        elif request.kind is RequestKind.NACK:
            metrics.NACKS.labels(type=metric_label(request.type_url)).inc()

    def on_response(self, stream: StreamInfo, response: ResponseInfo) -> None:
        recorded = self._type_metrics(response.type_url)
        recorded.pushes.inc()
        recorded.bytes_sent.inc(response.bytes)


class _TypeMetrics:
    """One type label's children of the per-response metrics."""

    __slots__ = ("acks", "bytes_sent", "push_to_ack", "pushes")

    def __init__(self, label: str) -> None:
        self.acks = metrics.ACKS.labels(type=label)
        self.push_to_ack = metrics.PUSH_TO_ACK_SECONDS.labels(type=label)
        self.pushes = metrics.PUSHES.labels(type=label)
        self.bytes_sent = metrics.BYTES_SENT.labels(type=label)


# NACK messages are the client's words, of any size (a 15 MB one was seen):
# kept, logged and shown only up to this many characters.
MAX_DETAIL_CHARS = 4096


def truncate_detail(message: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """`message` cut to `limit` characters, saying so and how long it was."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... [truncated: {len(message)} characters in all]"
