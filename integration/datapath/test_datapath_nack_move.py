"""A redirect that moves to a listener the real Envoy rejects keeps serving
(issue 10, item 1), end to end: the node agent's wiring in this process
(file source, translator, snapshot cache, ADS server on the Unix socket,
datapath follower), the real Envoy in the node namespace, the real kernel.

First the article's CiliumNetworkPolicy steers curl's connections to
httpbin through Envoy. Then the article's CiliumEnvoyConfig moves that
redirect to the CEC's listener. The CEC's listener is made one Envoy
rejects (its filter chains removed after translation: a NACK that
admission did not predict, which is the case this mechanism exists for).
Envoy NACKs it; curl must still be served through Envoy on the policy's
listener, and the kernel keeps steering there, programmed as soon as Envoy
answered (the follower stops waiting on the NACK). When a later version
carries a listener Envoy accepts, the redirect moves to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2

from nodemesh.ebpf import applier, pinned
from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.ebpf.mirrors import port_host
from nodemesh.model.snapshot import MeshModel
from nodemesh.node.datapath import AgentSettings, DatapathAgent
from nodemesh.node.envoy_process import find_envoy_binary, render_bootstrap
from nodemesh.wiring.agent import NodeAgent
from nodemesh.wiring.controlplane import ControlPlaneConfig
from nodemesh.xds.cache import LISTENER
from nodemesh.xds.translate import TranslateOptions, Translation
from tests.support.polling import wait_until_async

from .conftest import Datapath
from .node import NODE_IP, MeshNode, Pod
from .test_datapath_canary import VIPS, article_docs, write_sources

pytestmark = [pytest.mark.privileged, pytest.mark.envoy]

ADMIN = 19904
CEC_LISTENER = "httpbin-traffic-split"


def _break_cec_listener(translate: Callable[[MeshModel], Translation], broken: list[bool]) -> Any:
    """The translator's output with the CEC's listener stripped of its filter
    chains while `broken[0]` (Envoy: "no filter chains specified")."""

    def translate_broken(model: MeshModel) -> Translation:
        result = translate(model)
        listeners = result.resources[LISTENER]
        names = [n for n in listeners if CEC_LISTENER in n]
        if not broken[0] or not names:
            return result
        patched = dict(listeners)
        for name in names:
            bad = listener_pb2.Listener()
            bad.CopyFrom(listeners[name])
            del bad.filter_chains[:]
            patched[name] = bad
        resources = dict(result.resources)
        resources[LISTENER] = patched
        return dataclasses.replace(result, resources=resources)

    return translate_broken


async def _get(node: MeshNode, pod: Pod, n: int) -> list[dict[str, Any]]:
    out = await asyncio.to_thread(
        node.client, pod, "http-client", VIPS["httpbin"], "80", str(n), "httpbin"
    )
    return out  # type: ignore[return-value]


def test_nacked_listener_move_keeps_curl_served(
    node: MeshNode, datapath: Datapath, workdir: Path
) -> None:
    envoy = find_envoy_binary()
    names = ("curl", "web", "httpbin-v1", "httpbin-v2", "other")
    pods = {n: node.add_pod("default", n) for n in names}
    for n in ("httpbin-v1", "httpbin-v2", "other"):
        node.server(pods[n], "http-server", "80", n)
    sources = workdir / "sources"
    write_sources(sources, pods)
    docs = article_docs()
    (sources / "article-cnp.yaml").write_text(yaml.safe_dump(docs["CiliumNetworkPolicy"]))
    sock = workdir / "xds.sock"
    bootstrap = workdir / "envoy.yaml"
    bootstrap.write_text(yaml.safe_dump(render_bootstrap(xds_socket=sock, admin_port=ADMIN)))
    asyncio.run(_scenario(node, datapath, pods, sources, sock, bootstrap, envoy, docs))


async def _scenario(
    node: MeshNode,
    datapath: Datapath,
    pods: dict[str, Pod],
    sources: Path,
    sock: Path,
    bootstrap: Path,
    envoy: str,
    docs: dict[str, dict[str, Any]],
) -> None:
    config = ControlPlaneConfig(
        source_dirs=(sources,),
        xds_tcp=None,
        xds_socket=sock,
        admin_port=0,
        push_delay=0.05,
        translate=TranslateOptions(listener_address="0.0.0.0", use_original_dst=True),
    )
    settings = AgentSettings(datapath.config, NODE_IP, "node-a")
    agent = NodeAgent(
        config,
        DatapathAgent(settings, DirectoryPodCgroups(node.mesh)),
        "node-a",
        # Longer than any wait below: the follower must learn of the NACK
        # from the xDS server and stop waiting at once (before: it waited
        # this long, and the kernel never followed the NACKed version in
        # time).
        envoy_sync_timeout=600.0,
    )
    broken = [True]
    translator = agent.plane.translator
    translator.translate = _break_cec_listener(translator.translate, broken)  # type: ignore[method-assign]
    running = asyncio.create_task(agent.run(), name="node-agent")
    try:
        await asyncio.wait_for(agent.plane.ready.wait(), 60)
        argv = [envoy, "-c", str(bootstrap), "--service-node", "node-a", "--concurrency", "1"]
        argv += ["--service-cluster", "nodemesh", "--disable-hot-restart", "-l", "warning"]
        node.spawn(argv, node.proxy_cgroup, node.netns)
        await _wait(lambda: _via_envoy(node, pods["curl"]), "curl served through Envoy")
        old_port = _redirect_port(agent)
        # The move, to a listener Envoy rejects.
        (sources / "article-cec.yaml").write_text(yaml.safe_dump(docs["CiliumEnvoyConfig"]))
        await _wait(lambda: _nacked(agent), "Envoy NACKs the CEC's listener")
        model = agent.plane.model
        assert model is not None
        await _wait(
            lambda: _async(agent.follower.datapath.applied_version == model.version),
            "the kernel follows the NACKed version",
        )
        assert agent.follower.envoy_rejected is not None
        assert "LDS" in agent.follower.envoy_rejected, agent.follower.envoy_rejected
        assert not agent.follower.envoy_lagging  # it answered; nothing timed out
        assert _redirect_port(agent) != old_port  # the model moved the redirect
        assert _pinned_ports(datapath) == {old_port}  # the kernel did not
        served = await _get(node, pods["curl"], 20)
        assert {r.get("status") for r in served} == {200}, served
        assert {r["via"] for r in served} == {"envoy"}
        assert agent.follower.not_ready_reasons()
        # A later version whose listener Envoy accepts moves the redirect.
        broken[0] = False
        touch = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "touch", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.99", "ports": [{"port": 80, "protocol": "TCP"}]},
        }
        (sources / "touch.yaml").write_text(yaml.safe_dump(touch))  # a new model version
        await _wait(
            lambda: _async(_pinned_ports(datapath) == {_redirect_port(agent)}),
            "the redirect moved to the accepted listener",
        )
        served = await _get(node, pods["curl"], 20)
        assert {r.get("status") for r in served} == {200}, served
        assert {r["via"] for r in served} == {"envoy"}
        assert agent.follower.not_ready_reasons() == []
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def _async(value: bool) -> bool:
    return value


async def _via_envoy(node: MeshNode, pod: Pod) -> bool:
    probe = await _get(node, pod, 1)
    return probe[0].get("status") == 200 and probe[0].get("via") == "envoy"


def _redirect_port(agent: NodeAgent) -> int:
    """The proxy port of the model's redirect of httpbin:80."""
    model = agent.plane.model
    assert model is not None
    [port] = {r.proxy_port for r in model.redirects if r.service.name == "httpbin"}
    return port


def _pinned_ports(datapath: Datapath) -> set[int]:
    with pinned.open_map(datapath.config.maps_dir, pinned.L7REDIR) as m:
        return {port_host(port) for _, port in applier.read_redirects(m).values()}


async def _nacked(agent: NodeAgent) -> bool:
    return any(
        c.types[LISTENER].last_nack_error
        for c in agent.plane.server.clients()
        if LISTENER in c.types
    )


async def _wait(check: Callable[[], Any], what: str) -> None:
    await wait_until_async(check, what=what, timeout=60, interval=0.2)
