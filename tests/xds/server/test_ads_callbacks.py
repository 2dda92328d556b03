"""The server's callbacks (go-control-plane's `Callbacks` shape): what each
subscriber is told, in which order, and that a failing subscriber disturbs
nothing."""

from __future__ import annotations

from typing import Any

from nodemesh.xds.cache import CLUSTER
from nodemesh.xds.server import (
    RequestInfo,
    RequestKind,
    ResponseInfo,
    StreamInfo,
    XdsCallbacks,
)
from tests.xds.server.ads_harness import Harness, mesh, names_of, publish, wait_until


class Recorder(XdsCallbacks):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_stream_open(self, stream: StreamInfo) -> None:
        self.events.append(("open", stream))

    def on_stream_closed(self, stream: StreamInfo) -> None:
        self.events.append(("closed", stream))

    def on_request(self, stream: StreamInfo, request: RequestInfo) -> None:
        self.events.append(("request", request))

    def on_response(self, stream: StreamInfo, response: ResponseInfo) -> None:
        self.events.append(("response", response))

    def kinds(self) -> list[str]:
        out = []
        for what, info in self.events:
            out.append(f"{what}:{info.kind.value}" if what == "request" else what)
        return out


class Broken(XdsCallbacks):
    """Fails in every callback it overrides."""

    def on_request(self, stream: StreamInfo, request: RequestInfo) -> None:
        raise RuntimeError("subscriber bug")


class OnlyOpen(XdsCallbacks):
    """Overrides one method; the protocol's no-op defaults cover the rest."""

    def __init__(self) -> None:
        self.opened = 0

    def on_stream_open(self, stream: StreamInfo) -> None:
        self.opened += 1


async def test_every_event_reaches_every_subscriber(harness: Harness, api: str) -> None:
    first, second, partial = Recorder(), Recorder(), OnlyOpen()
    for sub in (Broken(), first, second, partial):
        harness.server.subscribe(sub)
    publish(harness.cache, "node-1", mesh())
    client = await harness.client(api)
    await (client.request(CLUSTER) if api == "sotw" else client.request(CLUSTER, subscribe=["*"]))
    resp = await client.recv()
    await client.ack(resp)
    publish(harness.cache, "node-1", mesh(("a", "c")), "v2")
    bad = await client.recv()
    assert "c" in names_of(bad)  # the broken subscriber ended nothing
    if api == "sotw":
        await client.nack(bad, resp.version_info, "cluster c: no endpoints")
    else:
        await client.nack(bad, "cluster c: no endpoints")
    await wait_until(lambda: "request:nack" in first.kinds(), what="NACK announced")
    await client.close()
    await wait_until(lambda: "closed" in first.kinds(), what="close announced")

    assert first.kinds() == [
        "open",
        "request:request",
        "response",
        "request:ack",
        "response",
        "request:nack",
        "closed",
    ]
    assert second.kinds() == first.kinds()
    assert partial.opened == 1
    opened: StreamInfo = first.events[0][1]
    assert (opened.node_id, opened.api) == ("node-1", api)
    ack: RequestInfo = first.events[3][1]
    assert ack.latency is not None and ack.nonce == resp.nonce
    nack: RequestInfo = first.events[5][1]
    assert nack.error_detail == "cluster c: no endpoints" and nack.type_url == CLUSTER
    sent: ResponseInfo = first.events[4][1]
    assert sent.nonce == bad.nonce and sent.resources == len(bad.resources) and sent.bytes > 0


async def test_a_refused_stream_is_never_announced(harness: Harness, api: str) -> None:
    recorder = Recorder()
    harness.server.subscribe(recorder)
    client = await harness.client(api)
    client._sent_node = True  # no node: refused before it is a client
    await client.request(CLUSTER)
    assert await client.closed() is not None
    assert recorder.events == []


async def test_subscribers_see_the_state_the_event_produced(harness: Harness) -> None:
    """A callback may read server.clients(): the ACK is already applied."""
    seen: list[bool] = []

    class Reader(XdsCallbacks):
        def on_request(self, stream: StreamInfo, request: RequestInfo) -> None:
            if request.kind is RequestKind.ACK:
                types = harness.server.clients()[0].types
                seen.append(not types[CLUSTER].pending)

    harness.server.subscribe(Reader())
    publish(harness.cache, "node-1", mesh())
    client = await harness.sotw()
    await client.request(CLUSTER)
    await client.ack(await client.recv())
    await wait_until(lambda: seen == [True], what="ACK seen as applied")
    await client.close()
