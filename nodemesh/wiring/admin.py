"""The admin HTTP port: health, readiness, debug views and Prometheus metrics.

It binds to localhost by default: config dumps show every route and endpoint
in the mesh, which is not for the pod network. The endpoints are the ones
operators know from istiod (`/debug/syncz`, `/debug/config_dump`) and from
Kubernetes probes (`/healthz`, `/readyz`).

The server knows nothing about xDS internals: it asks an `AdminView` for JSON
ready data, so the wiring decides what "ready" means.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import prometheus_client
from aiohttp import web

from nodemesh.wiring.admin_limits import (
    DEFAULT_MAX_CONNECTIONS,
    AcceptErrorsOnce,
    BoundedFactory,
    connection_limit,
)

DEFAULT_ADMIN_HOST = "127.0.0.1"


class AdminPortError(Exception):
    """The admin address cannot be served (in use, not local, ...)."""


DEFAULT_ADMIN_PORT = 9876


class AdminView(Protocol):
    """What the admin port shows. Every method returns JSON-serialisable data."""

    def not_ready_reasons(self) -> Sequence[str]:
        """Empty when ready; otherwise one line per reason."""
        ...

    def syncz(self) -> Mapping[str, Any]:
        """The model version and errors, sources, and every client's sync state."""
        ...

    def config_dump(self, node: str, resource_type: str | None) -> Mapping[str, Any] | None:
        """What the server holds for `node` (None: unknown node)."""
        ...


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=2, sort_keys=True) + "\n",
        status=status,
        content_type="application/json",
    )


def build_admin_app(
    view: AdminView,
    registry: prometheus_client.CollectorRegistry,
    pages: Mapping[str, web.Application] | None = None,
) -> web.Application:
    """`pages`: prefix ("/map/") -> an app served below it (the node agent's
    service map); "/map" redirects to "/map/" so the page's relative links
    resolve."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        reasons = list(view.not_ready_reasons())
        if reasons:
            return _json({"ready": False, "reasons": reasons}, status=503)
        return _json({"ready": True})

    async def syncz(_: web.Request) -> web.Response:
        return _json(view.syncz())

    async def config_dump(request: web.Request) -> web.Response:
        node = request.query.get("node")
        if not node:
            return _json({"error": "query parameter 'node' is required"}, status=400)
        dump = view.config_dump(node, request.query.get("type"))
        if dump is None:
            return _json({"error": f"no such node: {node!r}"}, status=404)
        return _json(dump)

    async def metrics(_: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(registry)
        return web.Response(
            body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/debug/syncz", syncz)
    app.router.add_get("/debug/config_dump", config_dump)
    app.router.add_get("/metrics", metrics)
    for prefix, page in (pages or {}).items():
        bare = prefix.rstrip("/")
        if bare:
            # Before the sub-app, which would take "/map" and find nothing.

            async def to_page(_: web.Request, where: str = prefix) -> web.Response:
                raise web.HTTPFound(where)

            app.router.add_get(bare, to_page)
        app.add_subapp(prefix, page)
    return app


@dataclass
class AdminServer:
    view: AdminView
    registry: prometheus_client.CollectorRegistry
    host: str = DEFAULT_ADMIN_HOST
    port: int = DEFAULT_ADMIN_PORT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # Extra pages below a prefix (see build_admin_app); set before start().
    pages: dict[str, web.Application] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _listener: asyncio.Server | None = None

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with port 0).
        Raises AdminPortError when the address cannot be bound."""
        app = build_admin_app(self.view, self.registry, self.pages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptErrorsOnce(loop.get_exception_handler()))
        assert self._runner.server is not None  # set up above
        factory = BoundedFactory(self._runner.server, connection_limit(self.max_connections))
        try:
            self._listener = await loop.create_server(factory, self.host, self.port)
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise AdminPortError(
                f"admin port: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        bound: int = self._listener.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
