"""The whole reporting chain, real at every step, with the real API server
(the port of the double's test_k8s_nack.py, now gone), through the wiring
`nodemesh serve --kubernetes` uses: a CiliumEnvoyConfig applied with
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
from integration.cluster.kube_cluster import KubeCluster
from integration.k8s_support import busy_cec, serving_with_envoy
from nodemesh.wiring.controlplane import KubernetesConfig

pytestmark = [pytest.mark.envoy, pytest.mark.k8s]


@pytest.fixture
async def mesh(deployed: KubeCluster, tmp_path: Path) -> AsyncIterator[KubeCluster]:
    """`nodemesh serve --kubernetes`'s wiring, in process, as deploy/'s
    account. The reporter's retry is an hour: every condition and Event
    below can only come from the model and xDS callbacks waking it."""
    await asyncio.to_thread(apply_article, deployed)
    kubeconfig = await asyncio.to_thread(deployed.service_account_kubeconfig, *AGENT_SA)
    k8s = KubernetesConfig(kubeconfig=str(kubeconfig), reporter="node-a", status_retry=3600)
    try:
        async with serving_with_envoy(k8s, tmp_path / "envoy"):
            yield deployed
    finally:
        await asyncio.to_thread(deployed.kubectl, "delete", "cec", "busy", "--ignore-not-found")


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
            mesh.kubectl, "apply", "-f", "-", stdin=yaml.safe_dump(busy_cec(busy_port))
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
