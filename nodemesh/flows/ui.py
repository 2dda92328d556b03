"""The live service-map page: a small aiohttp app over a ServiceMap.

Routes: `/` (the page), `/app.js`, `/api/graph` (the map as JSON),
`/api/events` (Server-Sent Events: the map, pushed whenever it changed,
checked every `push_interval`), `/api/edge?source=&destination=` (an edge's
recent flows). The page and its script ship in `nodemesh/flows/web/`; no
CDN, nothing fetched from elsewhere.

`feed` fills the map from any async source of flows: a ring follower in the
agent's process, or `nodemesh observe --ui`'s GetFlows stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from importlib import resources

from aiohttp import web

from nodemesh._gen.nodemesh.v1 import flow_pb2
from nodemesh.flows.ring import FlowRing, Lost
from nodemesh.flows.servicemap import ServiceMap

_WEB = resources.files("nodemesh.flows") / "web"


def _static(name: str, content_type: str) -> web.Response:
    return web.Response(
        body=(_WEB / name).read_bytes(),
        content_type=content_type,
        headers={"Cache-Control": "no-store"},
    )


def build_app(service_map: ServiceMap, push_interval: float = 0.5) -> web.Application:
    async def index(_: web.Request) -> web.Response:
        return _static("index.html", "text/html")

    async def script(_: web.Request) -> web.Response:
        return _static("app.js", "application/javascript")

    async def graph(_: web.Request) -> web.Response:
        return web.json_response(service_map.graph())

    async def edge(request: web.Request) -> web.Response:
        source = request.query.get("source", "")
        destination = request.query.get("destination", "")
        return web.json_response(service_map.recent(source, destination))

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        sent = -1
        while True:  # ends when the client goes away (the write raises)
            if service_map.generation != sent:
                sent = service_map.generation
                payload = json.dumps(service_map.graph(), separators=(",", ":"))
                await response.write(f"data: {payload}\n\n".encode())
            await asyncio.sleep(push_interval)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/app.js", script)
    app.router.add_get("/api/graph", graph)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/edge", edge)
    return app


async def feed(service_map: ServiceMap, flows: AsyncIterator[flow_pb2.Flow]) -> None:
    async for flow in flows:
        service_map.add(flow)


async def ring_flows(ring: FlowRing) -> AsyncIterator[flow_pb2.Flow]:
    """The ring's flows held now, then every new one (gaps are skipped: the
    map counts what it saw; loss is reported by ServerStatus)."""
    with ring.follow() as follower:
        for flow in ring.recent():
            yield flow
        while True:
            item = await follower.get()
            if not isinstance(item, Lost):
                yield item


class MapServer:
    """The page on host:port (port 0 picks one: see `port`)."""

    def __init__(self, service_map: ServiceMap, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service_map = service_map
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(build_app(self.service_map), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
