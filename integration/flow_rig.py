"""A canary rig with flows: the real control plane translating with an access
log, a real Envoy, the demo's backends, and a FlowServer (the agent's ALS
receiver and Observer) in this process. Not a test module."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from integration.local_mesh import copy_canary, private_loopback
from nodemesh._gen.nodemesh.v1 import observer_pb2
from nodemesh.cmd.demo.backends import BackendFleet
from nodemesh.cmd.demo.canary import backend_specs, find_redirect
from nodemesh.flows.collector import CollectorOptions, FlowCollector
from nodemesh.flows.service import FlowServer, FlowServerSettings
from nodemesh.node.envoy_process import EnvoyProcess, render_bootstrap
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig
from nodemesh.xds.translate import TranslateOptions

NODE = "flows-node"


@dataclass
class FlowRig:
    plane: ControlPlane
    envoy: EnvoyProcess
    fleet: BackendFleet
    collector: FlowCollector
    server: FlowServer
    als_socket: Path

    @property
    def workloads(self) -> dict[str, str]:
        return {s.replica: s.workload for s in self.fleet.specs}

    def url(self, path: str = "/headers") -> str:
        model = self.plane.model
        assert model is not None
        port = find_redirect(model, "default", "httpbin").proxy_port
        return f"http://{self.plane.config.translate.listener_address}:{port}{path}"

    async def get_flows(self, request: observer_pb2.GetFlowsRequest) -> list[Any]:
        async with grpc.aio.insecure_channel(self.server.observer_target) as channel:
            call = channel.unary_stream(
                "/nodemesh.v1.Observer/GetFlows",
                request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
                response_deserializer=observer_pb2.GetFlowsResponse.FromString,
            )
            return [r async for r in call(request)]


@asynccontextmanager
async def flow_rig(
    tmp_path: Path,
    capacity: int = 4096,
    start_flows: bool = True,
    manifests: Sequence[Mapping[str, Any]] = (),
    access_log: bool = True,
) -> AsyncIterator[FlowRig]:
    """`manifests` are added to the canary's source directory (a client pod)."""
    src = copy_canary(tmp_path)
    if manifests:
        (src / "extra.yaml").write_text(yaml.safe_dump_all(list(manifests)))
    sock, als = tmp_path / "xds.sock", tmp_path / "als.sock"
    plane = ControlPlane(
        ControlPlaneConfig(
            source_dirs=(src,),
            xds_tcp=None,
            xds_socket=sock,
            admin_port=0,
            translate=TranslateOptions(
                listener_address=private_loopback(),
                access_log_socket=str(als) if access_log else None,
            ),
        )
    )
    task = asyncio.create_task(plane.run(), name="control-plane")
    collector = FlowCollector(CollectorOptions(NODE, ring_capacity=capacity), lambda: plane.model)
    server = FlowServer(
        collector, FlowServerSettings(als_socket=als, observer_address="127.0.0.1:0")
    )
    await asyncio.wait_for(plane.ready.wait(), 30)
    assert plane.model is not None
    fleet = BackendFleet(backend_specs(plane.model))
    envoy = EnvoyProcess(tmp_path / "envoy", render_bootstrap(xds_socket=sock), NODE)
    await fleet.start()
    try:
        if start_flows:
            await server.start()
        await envoy.start()
        await envoy.wait_for_listener(find_redirect(plane.model, "default", "httpbin").proxy_port)
        await plane.wait_synced(NODE)
        yield FlowRig(plane, envoy, fleet, collector, server, als)
    finally:
        await envoy.stop()
        await fleet.stop()
        await server.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
