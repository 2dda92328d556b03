"""Updates ordered against the node Envoy: a new L7 redirect reaches the
kernel only after Envoy has ACKed the model version; a removed one leaves the
kernel before that (while Envoy still has the listener)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from nodemesh.ebpf import applier, pinned
from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.model.objects import (
    Kind,
    L7Redirect,
    LabelSelector,
    ObjectRef,
    Pod,
    RedirectOrigin,
    ServiceName,
    pairs,
)
from nodemesh.model.snapshot import MeshModel
from nodemesh.node.datapath import AgentSettings, DatapathAgent, DatapathFollower
from tests.support import factory

from .conftest import Datapath
from .node import NODE_IP, MeshNode

pytestmark = pytest.mark.privileged

HTTPBIN = ServiceName("default", "httpbin")


def _model(version: str, steer: bool) -> MeshModel:
    http = factory.service_port(80, target=8080, name="http")
    svc = factory.service("httpbin", http, ip="10.96.0.10", selector={})
    backend = factory.backend("10.0.9.2", 8080, node=None, pod="b")
    policy = ObjectRef(Kind.NETWORK_POLICY, "default", "p")
    redirect = L7Redirect(
        HTTPBIN,
        80,
        "TCP",
        15001,
        "l",
        "r",
        RedirectOrigin.NETWORK_POLICY,
        (policy,),
        clients=(LabelSelector(pairs({"app": "curl"})),),
    )
    curl = Pod(ObjectRef(Kind.POD, "default", "curl"), pairs({"app": "curl"}), ("10.0.1.2",), None)
    redirects = [redirect] if steer else []
    return factory.mesh_model(
        [svc], {HTTPBIN: {80: (backend,)}}, redirects=redirects, version=version, pods=[curl]
    )


def _pinned_redirects(dp: Datapath) -> int:
    with pinned.open_map(dp.config.maps_dir, pinned.L7REDIR) as m:
        return len(applier.read_redirects(m))


def test_redirects_wait_for_envoy_and_leave_before_it(node: MeshNode, datapath: Datapath) -> None:
    node.add_pod("default", "curl")
    seen_at_sync: list[tuple[str, int]] = []
    between: list[int] = []

    current: list[str] = []

    async def envoy_acked(node_id: str, timeout: float) -> None:
        seen_at_sync.append((current[-1], _pinned_redirects(datapath)))

    async def models() -> AsyncIterator[MeshModel]:
        for m in _models():
            current.append(m.version)
            yield m

    def _models() -> Iterator[MeshModel]:
        yield _model("m1", steer=False)
        yield _model("m2", steer=True)
        between.append(_pinned_redirects(datapath))  # after m2 is fully applied
        yield _model("m3", steer=False)

    settings = AgentSettings(datapath.config, NODE_IP)
    agent = DatapathAgent(settings, DirectoryPodCgroups(node.mesh))
    follower = DatapathFollower(agent, "node-envoy", envoy_synced=envoy_acked)
    # Sync test around asyncio.run: pyroute2's sync API (add_pod) needs no running loop.
    asyncio.run(follower.follow(models()))

    assert seen_at_sync == [("m1", 0), ("m2", 0), ("m3", 0)]
    assert between == [1]
    assert agent.applied_version == "m3"
