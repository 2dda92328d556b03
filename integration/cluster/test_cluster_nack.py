"""The whole reporting chain, real at every step, now with the real API server
(ported from integration/test_k8s_nack.py): a CiliumEnvoyConfig applied with
kubectl -> watcher (the agent's ServiceAccount token) -> store -> translator
-> ADS -> a real Envoy that rejects it -> its NACK, with Envoy's own message
and the node, written back as the CEC's Programmed condition and a Warning
Event, read back with kubectl."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.cluster.cluster_support import (
    AGENT_SA,
    apply_article,
    assert_created_as_events_v1,
    conditions,
    event_v1,
    wait_for,
)
from integration.cluster.kube_cluster import KubeCluster, free_port
from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.settings import WatchSettings
from nodemesh.k8s_watch.source import KubernetesSource
from nodemesh.node.envoy_process import EnvoyProcess, render_bootstrap
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig
from nodemesh.wiring.nacks import XdsNacks
from nodemesh.xds.translate import TranslateOptions

pytestmark = [pytest.mark.envoy, pytest.mark.k8s]
FAST = WatchSettings(backoff_initial=0.05, backoff_max=1.0, connect_timeout=2.0)
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


def private_loopback() -> str:
    """Our own loopback address: another test's Envoy may serve the same
    canary listener port on 127.0.0.1 (deterministic ports, SO_REUSEPORT)."""
    import random

    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"


@pytest.fixture
async def mesh(deployed: KubeCluster, tmp_path: Path) -> AsyncIterator[KubeCluster]:
    await asyncio.to_thread(apply_article, deployed)
    kubeconfig = await asyncio.to_thread(deployed.service_account_kubeconfig, *AGENT_SA)
    xds_port = free_port()
    plane = ControlPlane(
        ControlPlaneConfig(
            xds_tcp=f"127.0.0.1:{xds_port}",
            admin_port=0,
            translate=TranslateOptions(listener_address=private_loopback()),
        )
    )
    client = await make_api_client(kubeconfig=str(kubeconfig))
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
        await k8s.watch.wait_synced(60)
        await envoy.start()
        yield deployed
    finally:
        await envoy.stop()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        await client.close()
        await asyncio.to_thread(deployed.kubectl, "delete", "cec", "busy", "--ignore-not-found")
        for task in tasks:
            assert task.cancelled() or task.exception() is None, task.exception()


async def _programmed(kube: KubeCluster, name: str, what: str, want: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = conditions(kube, "cec", name).get("Programmed")
        return found if found and want in (found["status"], found["reason"]) else None

    return await asyncio.to_thread(wait_for, check, what, 90)


async def test_envoy_nack_becomes_the_programmed_condition(mesh: KubeCluster) -> None:
    split = "httpbin-traffic-split"
    audit_from = mesh.audit_mark()
    await _programmed(mesh, split, "the article's CEC is Accepted and Programmed", "True")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy_port = holder.getsockname()[1]
    try:
        await asyncio.to_thread(
            mesh.kubectl, "apply", "-f", "-", stdin=yaml.safe_dump(_busy_cec(busy_port))
        )
        programmed = await _programmed(
            mesh, "busy", "Envoy's NACK in the CEC's status", "EnvoyNACK"
        )
        assert programmed["status"] == "False"
        busy = conditions(mesh, "cec", "busy")
        assert programmed["observedGeneration"] == busy["_generation"]
        yaml_out = mesh.kubectl("get", "cec", "busy", "-o", "yaml").stdout
        assert "reason: EnvoyNACK" in yaml_out, yaml_out
        assert "node node-a rejected Listener" in programmed["message"]
        assert str(busy_port) in programmed["message"], "Envoy's own message names the address"
        assert conditions(mesh, "cec", "busy")["Accepted"]["status"] == "True"

        # The Event follows the status write: read back as an operator does,
        # with `kubectl get -o yaml` and `kubectl events`.
        event = await asyncio.to_thread(
            wait_for, lambda: event_v1(mesh, "busy", "EnvoyNACK"), "a Warning Event with the NACK"
        )
        assert (event["type"], event["action"]) == ("Warning", "Programmed")
        assert str(busy_port) in event["note"] and event["reportingInstance"] == "node-a"
        assert_created_as_events_v1(mesh, event, audit_from)
        listed = mesh.kubectl("events", "-n", "default", "--for", "ciliumenvoyconfig/busy").stdout
        assert "EnvoyNACK" in listed, listed
        # The other CEC is untouched by the neighbour's NACK.
        assert conditions(mesh, "cec", split)["Programmed"]["status"] == "True"
    finally:
        holder.close()
