"""The xDS server's NACKs as the Kubernetes reporter's `NackSource`, and the
callbacks that wake the reporter the moment one arrives or clears.

Wiring-level glue (it imports both sides, which the subpackages never do):
- `XdsNacks(server.clients)` reports, for every connected Envoy and type,
  the resources that Envoy currently rejects, with Envoy's own message. A
  NACK the client later ACKs past is no longer reported, so Programmed flips
  back.
- `NackNotifier(source.nacks_changed)` subscribes to the server's callbacks:
  a NACK, and every later response, ACK or close on a stream and type that
  NACKed, wakes the reporter at once (it used to wait for its 5 s retry).
  Waking is cheap: the reporter coalesces wake-ups and writes only what
  changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from nodemesh.k8s_watch.conditions import NackReport
from nodemesh.xds.server import (
    RequestInfo,
    RequestKind,
    ResponseInfo,
    StreamInfo,
    XdsCallbacks,
)
from nodemesh.xds.server.status import ClientStatus, ConfigStatus


class XdsNacks:
    def __init__(self, clients: Callable[[], Iterable[ClientStatus]]) -> None:
        self._clients = clients

    def nacks(self) -> list[NackReport]:
        out = []
        for client in self._clients():
            for type_url, status in sorted(client.types.items()):
                rejected = tuple(r.name for r in status.resources if r.status is ConfigStatus.ERROR)
                if rejected:
                    message = status.last_nack_error or "rejected (no message from Envoy)"
                    out.append(NackReport(client.node_id, type_url, rejected, message))
        return out


class NackNotifier(XdsCallbacks):
    """Calls `notify()` whenever what `XdsNacks` reports may have changed."""

    def __init__(self, notify: Callable[[], None]) -> None:
        self._notify = notify
        # (stream id, type URL) that NACKed at least once: only their later
        # events can clear a NACK. Forgotten when the stream closes.
        self._nacked: set[tuple[int, str]] = set()

    def on_request(self, stream: StreamInfo, request: RequestInfo) -> None:
        key = (stream.stream_id, request.type_url)
        if request.kind is RequestKind.NACK:
            self._nacked.add(key)
            self._notify()
        elif request.kind is RequestKind.ACK and key in self._nacked:
            self._notify()

    def on_response(self, stream: StreamInfo, response: ResponseInfo) -> None:
        # A new version replaces a rejected one: no longer ERROR.
        if (stream.stream_id, response.type_url) in self._nacked:
            self._notify()

    def on_stream_closed(self, stream: StreamInfo) -> None:
        gone = {key for key in self._nacked if key[0] == stream.stream_id}
        if gone:
            self._nacked -= gone
            self._notify()
