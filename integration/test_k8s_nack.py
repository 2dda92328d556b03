"""The whole reporting chain, real at every step: a CiliumEnvoyConfig in the API
server (double) -> watcher -> store -> translator -> ADS -> a real Envoy that
rejects it -> its NACK, with Envoy's own message and the node, written back as
the CEC's Programmed condition and a Warning Event."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.apiserver_double import ApiServerDouble, find_type
from integration.k8s_support import FAST
from integration.local_mesh import free_port, private_loopback
from nodemesh.cmd.demo.run import EXAMPLES
from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.source import KubernetesSource
from nodemesh.node.envoy_process import EnvoyProcess, render_bootstrap
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig
from nodemesh.wiring.nacks import XdsNacks
from nodemesh.xds.translate import TranslateOptions
from tests.support.polling import wait_until_async

pytestmark = pytest.mark.envoy

CEC = find_type("cilium.io", "v2", "ciliumenvoyconfigs")
EVENTS = find_type("events.k8s.io", "v1", "events")
assert CEC and EVENTS
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."


def _busy_cec(port: int) -> dict[str, Any]:
    """A listener on a port another process holds: only Envoy can find out."""
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    hcm = {
        "@type": HCM + "HttpConnectionManager",
        "stat_prefix": "busy",
        "route_config": {"name": "busy-route", "virtual_hosts": []},
        "http_filters": [router],
    }
    listener = {
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "busy-listener",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
    }
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEnvoyConfig",
        "metadata": {"name": "busy", "namespace": "default"},
        "spec": {"resources": [listener]},
    }


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[ApiServerDouble, ControlPlane]]:
    double = ApiServerDouble(bookmark_interval=0.5)
    for path in sorted(Path(EXAMPLES).glob("*.yaml")):
        double.store.load(d for d in yaml.safe_load_all(path.read_text()) if d)
    await double.start()
    xds_port = free_port()
    # Our own loopback address: another test's Envoy may serve the same canary
    # listener port on 127.0.0.1 (deterministic ports, SO_REUSEPORT).
    listen = private_loopback()
    plane = ControlPlane(
        ControlPlaneConfig(
            xds_tcp=f"127.0.0.1:{xds_port}",
            admin_port=0,
            translate=TranslateOptions(listener_address=listen),
        )
    )
    client = await make_api_client(double.url)
    k8s = KubernetesSource(
        KubeApi(client, FAST),
        plane.store,
        node="node-a",
        settings=FAST,
        nacks=XdsNacks(plane.server.clients),
        translation_errors=lambda: plane.translation.errors if plane.translation else (),
        retry_interval=0.3,
    )
    envoy = EnvoyProcess(
        tmp_path / "envoy", render_bootstrap(xds_tcp=("127.0.0.1", xds_port)), "node-a"
    )
    tasks = [
        asyncio.create_task(plane.run(), name="control-plane"),
        asyncio.create_task(k8s.run(), name="k8s-source"),
    ]
    try:
        await k8s.watch.wait_synced(30)
        await envoy.start()
        yield double, plane
    finally:
        await envoy.stop()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        await client.close()
        await double.stop()
        for task in tasks:
            assert task.cancelled() or task.exception() is None, task.exception()


def _conditions(double: ApiServerDouble, name: str) -> dict[str, dict[str, Any]]:
    obj = double.store.get(CEC, "default", name)
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


async def test_envoy_nack_becomes_the_programmed_condition(
    cluster: tuple[ApiServerDouble, ControlPlane],
) -> None:
    double, _plane = cluster
    split = "httpbin-traffic-split"
    await wait_until_async(
        lambda: _conditions(double, split).get("Programmed", {}).get("status") == "True",
        what="the article's CEC is Accepted and Programmed",
    )
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy_port = holder.getsockname()[1]
    try:
        double.store.create(CEC, _busy_cec(busy_port))
        await wait_until_async(
            lambda: _conditions(double, "busy").get("Programmed", {}).get("reason") == "EnvoyNACK",
            timeout=60,
            what="Envoy's NACK reaches the CEC's status",
        )
        programmed = _conditions(double, "busy")["Programmed"]
        assert programmed["status"] == "False"
        assert "node node-a rejected Listener" in programmed["message"]
        assert str(busy_port) in programmed["message"], "Envoy's own message names the address"
        assert _conditions(double, "busy")["Accepted"]["status"] == "True"

        def nack_event() -> bool:
            events = double.store.items(EVENTS)
            return any(
                (e["regarding"]["name"], e["reason"], e["type"]) == ("busy", "EnvoyNACK", "Warning")
                for e in events
            )

        # The Event follows the status write.
        await wait_until_async(nack_event, what="a Warning Event with the NACK")
        # The other CEC is untouched by the neighbour's NACK.
        assert _conditions(double, split)["Programmed"]["status"] == "True"
    finally:
        holder.close()
