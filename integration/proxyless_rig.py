"""A proxyless gRPC mesh for integration tests (not a test module).

The real control plane (`ControlPlane` on a YAML directory, ADS over TCP on
loopback) serves a Service `greeter` (gRPC, port 50051) split 90/10 between
`greeter-v1` and `greeter-v2` by a CiliumEnvoyConfig, and a plain Service
`solo`. The backends are real gRPC servers (grpc.aio) on loopback, each
answering `/nodemesh.test.Echo/Who` with its own name. A client is a real xDS
client in its own process (grpcio's or grpc-go's) with a bootstrap pointing
at the control plane; it speaks the line protocol of
integration/proxyless/grpcio_client.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from integration.local_mesh import private_loopback
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig
from nodemesh.xds.translate import TranslateOptions
from tests.support.gobuild import go_program

HERE = Path(__file__).parent / "proxyless"
GRPCGO_SOURCE = HERE / "grpcgo"
METHOD = "/nodemesh.test.Echo/Who"
SPLIT = "greeter.default.svc.cluster.local:50051"
PLAIN = "solo.default.svc.cluster.local:8080"
UNKNOWN = "nobody.default.svc.cluster.local:50051"
ZONE = "zone-a"


# -- backends -------------------------------------------------------------------


def _handler(name: str) -> grpc.GenericRpcHandler:
    async def who(request: bytes, context: Any) -> bytes:
        return name.encode()

    service, method = METHOD.strip("/").split("/")
    # No serializers: bytes in, bytes out (no generated code needed).
    return grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(who)}
    )


@asynccontextmanager
async def backends(names: Sequence[str]) -> AsyncIterator[dict[str, int]]:
    """One real gRPC server per name on 127.0.0.1; yields name -> port."""
    servers: list[grpc.aio.Server] = []
    ports: dict[str, int] = {}
    try:
        for name in names:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((_handler(name),))
            ports[name] = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            servers.append(server)
        yield ports
    finally:
        await asyncio.gather(*(s.stop(0) for s in servers))


# -- the mesh as YAML --------------------------------------------------------------


def _service(name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "ports": [{"name": "grpc", "port": port, "protocol": "TCP", "appProtocol": "grpc"}]
        },
    }


def _slice(service: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-local",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        # Each backend listens on its own loopback port: one slice each.
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}, "zone": ZONE}],
    }


def _split(weights: tuple[int, int]) -> dict[str, Any]:
    route = {
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": "greeter-route",
        "virtual_hosts": [
            {
                "name": "greeter",
                # As a CEC for the node Envoy names it; the proxyless copy
                # also answers to the full target name.
                "domains": ["greeter"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "route": {
                            "weighted_clusters": {
                                "clusters": [
                                    {"name": "default/greeter-v1", "weight": weights[0]},
                                    {"name": "default/greeter-v2", "weight": weights[1]},
                                ]
                            }
                        },
                    }
                ],
            }
        ],
    }
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEnvoyConfig",
        "metadata": {"name": "greeter-split", "namespace": "default"},
        "spec": {"services": [{"name": "greeter", "namespace": "default"}], "resources": [route]},
    }


def write_mesh(src: Path, ports: dict[str, int], weights: tuple[int, int]) -> None:
    docs = [
        _service("greeter", 50051),
        _service("greeter-v1", 50051),
        _service("greeter-v2", 50051),
        _service("solo", 8080),
        _slice("greeter", ports["v1"]),
        _slice("greeter-v1", ports["v1"]),
        _slice("greeter-v2", ports["v2"]),
        _slice("solo", ports["solo"]),
    ]
    (src / "mesh.yaml").write_text(yaml.safe_dump_all(docs))
    write_split(src, weights)


def write_split(src: Path, weights: tuple[int, int]) -> None:
    """The CEC in its own file, rewritten as a user edits it."""
    tmp = src / ".split.yaml.tmp"
    tmp.write_text(yaml.safe_dump(_split(weights)))
    tmp.replace(src / "split.yaml")


# -- clients -------------------------------------------------------------------------


def bootstrap(path: Path, xds_port: int, node_id: str) -> Path:
    """gRPC's xDS bootstrap: nodemesh's ADS on loopback, no credentials."""
    config = {
        "xds_servers": [
            {
                "server_uri": f"127.0.0.1:{xds_port}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": node_id, "locality": {"zone": ZONE}},
    }
    path.write_text(json.dumps(config))
    return path


@dataclass
class Batch:
    counts: dict[str, int]
    errors: dict[str, int]
    seconds: float


@dataclass
class ClientProcess:
    """A real xDS client process; `batch(n)` makes n calls on its one channel."""

    argv: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    stderr: list[str] = field(default_factory=list)

    async def start(self) -> ClientProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        return self

    async def batch(self, calls: int, timeout: float = 120.0) -> Batch:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{calls}\n".encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            err = await self.proc.stderr.read() if self.proc.stderr else b""
            raise AssertionError(f"client {self.argv[0]} exited: {err.decode()[-2000:]}")
        data = json.loads(line)
        return Batch(data["counts"], data["errors"] or {}, data["seconds"])

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def client_env(bootstrap_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["GRPC_XDS_BOOTSTRAP"] = str(bootstrap_path)
    return env


def grpcio_client(target: str, bootstrap_path: Path, timeout: float = 5.0) -> ClientProcess:
    script = HERE / "grpcio_client.py"
    return ClientProcess(
        [sys.executable, str(script), f"xds:///{target}", str(timeout)],
        client_env(bootstrap_path),
    )


def grpcgo_binary() -> Path:
    """grpc-go's client, built from the module proxy (pinned by go.mod/go.sum)
    into a cache keyed by the sources and the Go version; never committed."""
    return go_program(GRPCGO_SOURCE, "grpcgo")


def grpcgo_client(target: str, bootstrap_path: Path, timeout: float = 5.0) -> ClientProcess:
    argv = [str(grpcgo_binary()), "client", "-target", f"xds:///{target}", "-timeout"]
    return ClientProcess([*argv, f"{int(timeout * 1000)}ms"], client_env(bootstrap_path))


# -- the rig -------------------------------------------------------------------------


@dataclass
class Rig:
    plane: ControlPlane
    src: Path
    tmp: Path

    @property
    def xds_port(self) -> int:
        port = self.plane.server.tcp_port
        assert port is not None
        return port

    def bootstrap(self, node_id: str) -> Path:
        return bootstrap(self.tmp / f"{node_id}.json", self.xds_port, node_id)

    async def set_weights(self, weights: tuple[int, int]) -> None:
        """Edit the CEC and wait until the control plane published it."""
        before = self.plane.model.generation if self.plane.model else None
        write_split(self.src, weights)
        deadline = time.monotonic() + 30
        while self.plane.model is None or self.plane.model.generation == before:
            if time.monotonic() > deadline:
                raise AssertionError(f"the control plane did not pick up weights {weights}")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def proxyless_mesh(tmp: Path) -> AsyncIterator[Rig]:
    src = tmp / "mesh"
    src.mkdir()
    async with backends(["v1", "v2", "solo"]) as ports:
        write_mesh(src, ports, (90, 10))
        plane = ControlPlane(
            ControlPlaneConfig(
                source_dirs=(src,),
                xds_tcp="127.0.0.1:0",
                admin_port=0,
                push_delay=0.02,
                translate=TranslateOptions(listener_address=private_loopback()),
            )
        )
        task = asyncio.create_task(plane.run(), name="control-plane")
        try:
            await asyncio.wait_for(plane.ready.wait(), 30)
            yield Rig(plane, src, tmp)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
