"""One conformance case's world: echo pods, the control plane, the real Envoy.

See mesh.py for what stands in for what. `World.request` sends one
ExpectedResponse's request from a client pod and returns what came back;
`check` compares it as the suite's compareRequest does.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
from aiohttp import web

from nodemesh.ebpf.planner import plan
from nodemesh.model.objects import ServiceName
from nodemesh.node.envoy_process import EnvoyProcess, render_bootstrap
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig
from nodemesh.xds.translate import TranslateOptions

from .mesh import (
    ECHO_METHOD,
    ECHO_PORTS,
    GRPC_PORT,
    POD_IPS,
    MeshCase,
    echo_answer,
    echo_response,
    hostname_of,
    write_world,
)

NODE = "mesh-node"


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    echo: dict[str, Any]  # the echo pod's report; {} when Envoy answered itself


async def _echo_pods() -> list[web.AppRunner]:
    runners = []
    for (namespace, name), ip in POD_IPS.items():

        async def handle(
            request: web.Request, pod: str = f"{name}-0", ns: str = namespace
        ) -> web.Response:
            body = echo_answer(
                pod, ns, request.method, request.path_qs, list(request.headers.items())
            )
            return web.Response(text=body, content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for port in ECHO_PORTS:
            await web.TCPSite(runner, ip, port).start()
        runners.append(runner)
    return runners


class _GrpcEcho(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no stubs
    """The Echo method of the suite's gRPC echo server, for one pod."""

    def __init__(self, pod: str) -> None:
        self.pod = pod

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != ECHO_METHOD:
            return None

        async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return echo_response(self.pod)

        return grpc.unary_unary_rpc_method_handler(echo)


async def _grpc_pods() -> list[grpc.aio.Server]:
    servers = []
    for (_, name), ip in POD_IPS.items():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_GrpcEcho(f"{name}-0"),))
        server.add_insecure_port(f"{ip}:{GRPC_PORT}")
        await server.start()
        servers.append(server)
    return servers


class World:
    def __init__(self, plane: ControlPlane, listener_address: str) -> None:
        self.plane = plane
        self.listener_address = listener_address

    def _target(self, client_ns: str, host: str) -> tuple[str, int]:
        """Where the client pod's connection to `host` ends up."""
        name, _, port_text = host.partition(":")
        port = int(port_text or 80)
        if name in POD_IPS.values():
            return name, port
        service, _, namespace = name.partition(".")
        target = ServiceName(namespace or client_ns, service)
        model = self.plane.model
        assert model is not None
        svc = model.services[target]
        client_pod = f"{client_ns}/echo-v1-0"
        for redirect in plan(model, NODE).redirects:
            steered = redirect.all_clients or any(c.pod == client_pod for c in redirect.clients)
            if redirect.vip in svc.cluster_ips and redirect.port == port and steered:
                return self.listener_address, redirect.proxy_port
        backend = model.backends_of(target, port)[0]  # the kernel's L4 translation
        return backend.address, backend.port

    async def request(self, client_ns: str, request: dict[str, Any]) -> Answer:
        host = request.get("Host") or "echo"
        address, port = self._target(client_ns, host)
        if str(request.get("Protocol", "")).lower() == "grpc":
            return await self._grpc(address, port, host)
        headers = {"Host": host, **(request.get("Headers") or {})}
        method = request.get("Method") or "GET"
        path = request.get("Path") or "/"
        client_ip = POD_IPS[(client_ns, "echo-v1")]
        connector = aiohttp.TCPConnector(local_addr=(client_ip, 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"http://{address}:{port}{path}"
            async with session.request(
                method,
                url,
                headers=headers,
                allow_redirects=False,
                skip_auto_headers=("User-Agent",),
            ) as response:
                text = await response.text()
                echo: dict[str, Any] = {}
                if response.content_type == "application/json":
                    echo = json.loads(text)
                return Answer(response.status, response.headers, echo)

    async def _grpc(self, address: str, port: int, host: str) -> Answer:
        """One Echo call, as the suite's gRPC client makes it (authority = host).
        A gRPC status is reported as the suite maps it: OK -> 200."""
        options = [("grpc.default_authority", host)]
        async with grpc.aio.insecure_channel(f"{address}:{port}", options=options) as channel:
            call = channel.unary_unary(ECHO_METHOD)
            try:
                response: bytes = await call(b"", timeout=10)
            except grpc.aio.AioRpcError as exc:
                return Answer(500, {"grpc-status": str(exc.code())}, {})
        return Answer(200, {}, {"pod": hostname_of(response)})


def check(expected: dict[str, Any], answer: Answer) -> list[str]:
    """The suite's compareRequest (utils/echo/pod.go), problem by problem."""
    problems = []
    response = expected.get("Response") or {}
    codes = list(response.get("StatusCodes") or [])
    if response.get("StatusCode") and response["StatusCode"] not in codes:
        codes.append(response["StatusCode"])
    codes = codes or [200]
    if answer.status not in codes:
        problems.append(f"status {answer.status}, wanted one of {codes}")
    seen = {k.lower(): ",".join(v) for k, v in (answer.echo.get("headers") or {}).items()}
    wanted = expected.get("ExpectedRequest") or {}
    for name, value in ((wanted.get("Request") or {}).get("Headers") or {}).items():
        if seen.get(name.lower()) != value:
            problems.append(f"request header {name}: {seen.get(name.lower())!r}, wanted {value!r}")
    for name in wanted.get("AbsentHeaders") or []:
        if name.lower() in seen:
            problems.append(f"request header {name} should be absent, is {seen[name.lower()]!r}")
    got = answer.headers
    for name in response.get("AbsentHeaders") or []:
        if name in got:
            problems.append(f"response header {name} should be absent")
    for name, value in (response.get("Headers") or {}).items():
        if got.get(name) != value:
            problems.append(f"response header {name}: {got.get(name)!r}, wanted {value!r}")
    backend = expected.get("Backend") or ""
    if not str(answer.echo.get("pod", "")).startswith(backend):
        problems.append(f"backend {answer.echo.get('pod')!r}, wanted {backend!r}")
    return problems


@asynccontextmanager
async def world(case: MeshCase, tmp: Path) -> AsyncIterator[World]:
    src = tmp / "src"
    src.mkdir()
    write_world(src, case)
    sock = tmp / "xds.sock"
    address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
    plane = ControlPlane(
        ControlPlaneConfig(
            source_dirs=(src,),
            xds_tcp=None,
            xds_socket=sock,
            admin_port=0,
            translate=TranslateOptions(listener_address=address),
        )
    )
    task = asyncio.create_task(plane.run(), name="control-plane")
    runners = await _echo_pods()
    grpc_servers = await _grpc_pods()
    # State-of-the-world ADS: over delta, a model without any Cluster (the
    # redirect-only cases) leaves Envoy's first CDS request unanswered until
    # its 15 s initial_fetch_timeout (seen here; a control-plane issue).
    bootstrap = render_bootstrap(xds_socket=sock, api_type="GRPC")
    envoy = EnvoyProcess(tmp / "envoy", bootstrap, NODE)
    try:
        await asyncio.wait_for(plane.ready.wait(), 30)
        await envoy.start()
        await plane.wait_synced(NODE)
        model = plane.model
        assert model is not None
        for redirect in model.redirects:
            await envoy.wait_for_listener(redirect.proxy_port)
        yield World(plane, address)
    finally:
        await envoy.stop()
        for runner in runners:
            await runner.cleanup()
        for server in grpc_servers:
            await server.stop(None)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
