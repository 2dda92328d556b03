"""httpbin-compatible backends for local runs, one per Deployment replica.

They answer the httpbin paths the article's curl loop and the tests use
(`/headers`, `/get`, `/status/<code>`, `/anything`) and say which replica and
version answered, both in the `X-Nodemesh-Backend`/`X-Nodemesh-Version`
response headers and in the JSON body, so a client can count the split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

BACKEND_HEADER = "X-Nodemesh-Backend"
VERSION_HEADER = "X-Nodemesh-Version"


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One replica: the workload it belongs to, its version label and address."""

    workload: str
    replica: str
    version: str
    host: str
    port: int


def _handlers(spec: BackendSpec) -> web.Application:
    ident = {"backend": spec.replica, "version": spec.version, "workload": spec.workload}

    def reply(payload: dict[str, object], status: int = 200) -> web.Response:
        resp = web.json_response({**payload, "nodemesh": ident}, status=status)
        resp.headers[BACKEND_HEADER] = spec.replica
        resp.headers[VERSION_HEADER] = spec.version
        return resp

    async def headers(request: web.Request) -> web.Response:
        return reply({"headers": dict(request.headers)})

    async def get(request: web.Request) -> web.Response:
        return reply(
            {
                "args": dict(request.query),
                "headers": dict(request.headers),
                "origin": request.remote or "",
                "url": str(request.url),
            }
        )

    async def anything(request: web.Request) -> web.Response:
        body = await request.text()
        return reply({"method": request.method, "headers": dict(request.headers), "data": body})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return reply({}, status=code)

    app = web.Application()
    app.router.add_get("/headers", headers)
    app.router.add_get("/get", get)
    app.router.add_route("*", "/anything{tail:.*}", anything)
    app.router.add_route("*", "/status/{code:\\d{3}}", status)
    return app


@dataclass
class BackendFleet:
    """Runs a set of backends in the current event loop."""

    specs: list[BackendSpec]
    _runners: list[web.AppRunner] = field(default_factory=list)
    bound: list[int] = field(default_factory=list)  # the port each spec got (port 0: any)

    async def start(self) -> None:
        for spec in self.specs:
            runner = web.AppRunner(_handlers(spec), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, spec.host, spec.port, reuse_address=True).start()
            self._runners.append(runner)
            self.bound.append(runner.addresses[0][1])

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        self.bound.clear()

    async def __aenter__(self) -> BackendFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
