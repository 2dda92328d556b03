"""HTTPRoute status.parents written back to the real API server (GAMMA; the
port of integration/test_k8s_route_status.py), as deploy/'s account: the
Gateway API CRDs in deploy/ validate every write (status.parents' schema,
conditions with observedGeneration), RBAC allows exactly httproutes/status,
and another controller's parent entry is kept.

The Envoy NACK at the end is injected through the NackSource seam: nodemesh
translates a valid HTTPRoute to a valid RouteConfiguration, so a real Envoy
has nothing to reject here (a real NACK on a CEC is test_cluster_nack.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from integration.cluster.cluster_support import agent_status_source, forbidden, kget, wait_for
from integration.cluster.kube_cluster import KubeCluster
from integration.k8s_support import Nacks
from nodemesh.k8s_watch.conditions import NackReport
from nodemesh.k8s_watch.source import KubernetesSource
from nodemesh.model.gamma import CONTROLLER_NAME

pytestmark = pytest.mark.k8s

NS = "gamma-routes"
OTHER = {
    "parentRef": {"name": "gw", "namespace": NS},
    "controllerName": "example.net/gateway-controller",
    "conditions": [
        {
            "type": "Accepted",
            "status": "True",
            "reason": "Accepted",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ],
}


def _route(backend: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "split", "namespace": NS},
        "spec": {
            "parentRefs": [
                {"group": "", "kind": "Service", "name": "frontend", "port": 80},
                {"name": "gw"},  # a Gateway: another controller's
            ],
            "rules": [{"backendRefs": [{"name": backend, "port": 80}]}],
        },
    }


def _services() -> str:
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}]
    for name in ("frontend", "backend"):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"selector": {"app": name}, "ports": [{"port": 80}]},
            }
        )
    return yaml.safe_dump_all(docs)


@pytest.fixture
async def mesh(deployed: KubeCluster) -> AsyncIterator[tuple[KubeCluster, KubernetesSource, Nacks]]:
    await asyncio.to_thread(deployed.kubectl, "apply", "-f", "-", stdin=_services())
    try:
        async with agent_status_source(deployed) as (source, nacks):
            yield deployed, source, nacks
    finally:
        # Wait until it is gone: a later test's `nodemesh serve` would
        # otherwise see its objects and be refused Events (403) while the
        # namespace terminates, which the audit checks count.
        await asyncio.to_thread(
            deployed.kubectl, "delete", "namespace", NS, "--wait=true", "--timeout=120s"
        )


def _parents(kube: KubeCluster) -> list[dict[str, Any]]:
    obj = kget(kube, "httproute", "split", "-n", NS)
    found: list[dict[str, Any]] = (obj.get("status") or {}).get("parents") or []
    return found


def _kept(kube: KubeCluster) -> bool:
    """The Gateway controller's entry, as it wrote it (the CRD defaults its
    parentRef's group and kind)."""
    theirs = [p for p in _parents(kube) if p["controllerName"] == OTHER["controllerName"]]
    return len(theirs) == 1 and (
        theirs[0]["parentRef"]["name"],
        theirs[0]["parentRef"].get("kind", "Gateway"),
        theirs[0]["conditions"],
    ) == ("gw", "Gateway", OTHER["conditions"])


def _ours(kube: KubeCluster) -> dict[str, dict[str, Any]]:
    mine = [p for p in _parents(kube) if p["controllerName"] == CONTROLLER_NAME]
    return {c["type"]: c for p in mine for c in p["conditions"]}


async def _until(kube: KubeCluster, check: Any, what: str) -> Any:
    return await asyncio.to_thread(wait_for, lambda: check(_ours(kube)), what, 90)


async def test_route_status_parents_reasons_generation_and_nack(
    mesh: tuple[KubeCluster, KubernetesSource, Nacks],
) -> None:
    kube, source, nacks = mesh
    mark = kube.audit_mark()
    kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(_route("missing")))
    # The Gateway's controller reports on its own parent, through the real
    # status subresource.
    other = json.dumps({"status": {"parents": [OTHER]}})
    kube.kubectl(
        "patch", "httproute", "split", "-n", NS, "--subresource=status", "--type=merge", "-p", other
    )
    ours = await _until(kube, lambda o: "ResolvedRefs" in o and o, "our parent's conditions")
    assert (ours["Accepted"]["status"], ours["Accepted"]["reason"]) == ("True", "Accepted")
    resolved = ours["ResolvedRefs"]
    assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")
    assert resolved["observedGeneration"] == 1
    # Only the Service parent is ours; the Gateway controller's entry is kept.
    await asyncio.to_thread(wait_for, lambda: _kept(kube), "the other entry kept")
    [mine] = [p for p in _parents(kube) if p["controllerName"] == CONTROLLER_NAME]
    assert mine["parentRef"] == {
        "group": "",
        "kind": "Service",
        "namespace": NS,
        "name": "frontend",
        "port": 80,
    }

    # The user fixes the backend: generation 2, observed.
    kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(_route("backend")))
    fixed = await _until(
        kube,
        lambda o: o["ResolvedRefs"]["observedGeneration"] == 2 and o,
        "the fix observed",
    )
    assert fixed["ResolvedRefs"]["status"] == "True" and fixed["Programmed"]["status"] == "True"

    nacks.reports.append(
        NackReport(
            "node-a",
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            (f"nodemesh/gamma/{NS}/frontend/80",),
            "Proto constraint validation failed",
        )
    )
    source.nacks_changed()
    nacked = await _until(
        kube, lambda o: o["Programmed"]["status"] == "False" and o, "the NACK as Programmed"
    )
    programmed = nacked["Programmed"]
    assert programmed["reason"] == "EnvoyNACK" and "node node-a" in programmed["message"]
    assert _kept(kube), _parents(kube)
    assert forbidden(kube, since=mark) == [], "the account's writes were all allowed"
