"""`SyncSignal`: wakes whoever waits for a client to be in sync, from the
xDS server's callbacks instead of a polling loop (`ControlPlane.wait_synced`).
"""

from __future__ import annotations

import asyncio

from nodemesh.xds.server import RequestInfo, ResponseInfo, StreamInfo, XdsCallbacks


class SyncSignal(XdsCallbacks):
    """An edge that fires whenever any stream's sync state may have changed:
    a stream opened or closed, a request applied, a response sent, or (via
    `notify`) a new snapshot published.

    Waiters take `changed()` *before* checking their condition and await it
    after, so an edge between the check and the wait is never missed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def changed(self) -> asyncio.Event:
        """The event the next change sets."""
        return self._event

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def on_stream_open(self, stream: StreamInfo) -> None:
        self.notify()

    def on_stream_closed(self, stream: StreamInfo) -> None:
        self.notify()

    def on_request(self, stream: StreamInfo, request: RequestInfo) -> None:
        self.notify()

    def on_response(self, stream: StreamInfo, response: ResponseInfo) -> None:
        self.notify()
