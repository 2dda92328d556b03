"""A redirect that moves to a listener the node Envoy rejected keeps its
previous target in the real kernel (issue 10, item 1): the xDS server keeps
the previous listener until its replacement is ACKed, so steering to it
keeps traffic served, where the new target would refuse connections.

Envoy's side is a double here (which listeners it holds, and an ACK that
never comes): the NACK itself, against the real Envoy, is
tests/xds/server/test_ads_envoy_held_removal.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import MappingProxyType

import pytest

from nodemesh.ebpf import applier, pinned
from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.ebpf.mirrors import port_host
from nodemesh.model.objects import (
    Kind,
    L7Redirect,
    ObjectRef,
    RedirectOrigin,
    Service,
    ServiceName,
    ServicePort,
)
from nodemesh.model.snapshot import BackendAddress, MeshModel
from nodemesh.node.datapath import AgentSettings, DatapathAgent, DatapathFollower

from .conftest import Datapath
from .node import NODE_IP, MeshNode

pytestmark = pytest.mark.privileged

HTTPBIN = ServiceName("default", "httpbin")


def _model(version: str, listener: str, port: int) -> MeshModel:
    svc = Service(
        ObjectRef(Kind.SERVICE, "default", "httpbin"),
        ("10.96.0.10",),
        (ServicePort("http", 80, "TCP", 8080),),
        selector=(),
    )
    backend = BackendAddress("10.0.9.2", 8080, None, "b", True, True, False)
    cec = ObjectRef(Kind.ENVOY_CONFIG, "default", "canary")
    redirect = L7Redirect(
        HTTPBIN, 80, "TCP", port, listener, "r", RedirectOrigin.ENVOY_CONFIG, (cec,), None
    )
    return MeshModel(
        version=version,
        generation=1,
        services=MappingProxyType({HTTPBIN: svc}),
        pods=(),
        redirects=(redirect,),
        backends=MappingProxyType({HTTPBIN: MappingProxyType({80: (backend,)})}),
    )


def _targets(dp: Datapath) -> set[int]:
    with pinned.open_map(dp.config.maps_dir, pinned.L7REDIR) as m:
        return {port_host(port) for _, port in applier.read_redirects(m).values()}


def test_redirect_stays_on_the_held_listener_while_envoy_rejects_the_new_one(
    node: MeshNode, datapath: Datapath
) -> None:
    # What Envoy holds at each version: m2's listener "new" is NACKed.
    holds = {"m1": {"old"}, "m2": {"old"}, "m3": {"old", "new"}}
    current: list[str] = []
    seen: dict[str, set[int]] = {}
    reasons: dict[str, list[str]] = {}

    async def envoy_synced(node_id: str, timeout: float) -> None:
        if current[-1] == "m2":
            raise TimeoutError  # a NACK: the version is never ACKed

    async def models() -> AsyncIterator[MeshModel]:
        for model in (
            _model("m1", "old", 15001),
            _model("m2", "new", 15002),
            _model("m3", "new", 15002),
        ):
            if current:
                seen[current[-1]] = _targets(datapath)
                reasons[current[-1]] = follower.not_ready_reasons()
            current.append(model.version)
            yield model

    agent = DatapathAgent(AgentSettings(datapath.config, NODE_IP), DirectoryPodCgroups(node.mesh))
    follower = DatapathFollower(
        agent,
        "node-envoy",
        envoy_synced=envoy_synced,
        envoy_listeners=lambda node_id: holds[current[-1]],
    )
    asyncio.run(follower.follow(models()))

    assert seen["m1"] == {15001}
    assert seen["m2"] == {15001}  # kept: Envoy does not hold "new"
    assert any("'new'" in reason for reason in reasons["m2"])
    assert _targets(datapath) == {15002}  # moved once Envoy holds "new"
    assert follower.not_ready_reasons() == []
