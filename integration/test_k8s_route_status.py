"""HTTPRoute status.parents written back by the Kubernetes source (GAMMA)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from integration.apiserver_double import ApiServerDouble, find_type
from integration.k8s_support import FAST
from integration.test_k8s_status import CountingStore, Nacks, _service
from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.conditions import NackReport
from nodemesh.k8s_watch.source import KubernetesSource
from nodemesh.model.gamma import CONTROLLER_NAME
from tests.support.polling import wait_until_async

SVC = find_type("", "v1", "services")
HTTP_ROUTES = find_type("gateway.networking.k8s.io", "v1", "httproutes")
assert SVC and HTTP_ROUTES

OTHER = {
    "parentRef": {"name": "gw", "namespace": "default"},
    "controllerName": "example.net/gateway-controller",
    "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}],
}


def _route(backend: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "split", "namespace": "default"},
        "spec": {
            "parentRefs": [
                {"group": "", "kind": "Service", "name": "frontend", "port": 80},
                {"name": "gw"},  # a Gateway: another controller's
            ],
            "rules": [{"backendRefs": [{"name": backend, "port": 80}]}],
        },
    }


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[ApiServerDouble, KubernetesSource, Nacks]]:
    double = ApiServerDouble(bookmark_interval=0.5)
    for name, ip in (("frontend", "10.96.0.10"), ("backend", "10.96.0.11")):
        double.store.create(SVC, _service(name, ip))
    await double.start()
    client = await make_api_client(double.url)
    nacks = Nacks()
    source = KubernetesSource(
        KubeApi(client, FAST),
        CountingStore(),
        node="node-a",
        settings=FAST,
        nacks=nacks,
        retry_interval=0.2,
    )
    task = asyncio.create_task(source.run(), name="k8s-source")
    await source.watch.wait_synced(30)
    yield double, source, nacks
    task.cancel()
    await asyncio.wait([task])
    await client.close()
    await double.stop()


def _ours(double: ApiServerDouble) -> dict[str, dict[str, Any]]:
    obj = double.store.get(HTTP_ROUTES, "default", "split")
    parents = (obj.get("status") or {}).get("parents") or []
    mine = [p for p in parents if p["controllerName"] == CONTROLLER_NAME]
    return {c["type"]: c for p in mine for c in p["conditions"]}


def _parents(double: ApiServerDouble) -> list[dict[str, Any]]:
    obj = double.store.get(HTTP_ROUTES, "default", "split")
    found: list[dict[str, Any]] = (obj.get("status") or {}).get("parents") or []
    return found


async def test_route_status_parents_reasons_generation_and_nack(
    mesh: tuple[ApiServerDouble, KubernetesSource, Nacks],
) -> None:
    double, source, nacks = mesh
    created = double.store.create(HTTP_ROUTES, _route("missing"))
    double.store.patch_status(HTTP_ROUTES, "default", "split", {"status": {"parents": [OTHER]}})
    await wait_until_async(lambda: "ResolvedRefs" in _ours(double))
    ours = _ours(double)
    assert (ours["Accepted"]["status"], ours["Accepted"]["reason"]) == ("True", "Accepted")
    resolved = ours["ResolvedRefs"]
    assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")
    assert resolved["observedGeneration"] == created["metadata"]["generation"]
    # Only the Service parent is ours; the Gateway controller's entry is kept.
    assert OTHER in _parents(double)
    [mine] = [p for p in _parents(double) if p["controllerName"] == CONTROLLER_NAME]
    assert mine["parentRef"] == {
        "group": "",
        "kind": "Service",
        "namespace": "default",
        "name": "frontend",
        "port": 80,
    }

    obj = copy.deepcopy(double.store.get(HTTP_ROUTES, "default", "split"))
    obj["spec"] = _route("backend")["spec"]
    double.store.update(HTTP_ROUTES, obj)
    await wait_until_async(lambda: _ours(double)["ResolvedRefs"]["status"] == "True")
    assert _ours(double)["ResolvedRefs"]["observedGeneration"] == 2
    assert _ours(double)["Programmed"]["status"] == "True"

    nacks.reports.append(
        NackReport(
            "node-a",
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ("nodemesh/gamma/default/frontend/80",),
            "Proto constraint validation failed",
        )
    )
    source.nacks_changed()
    await wait_until_async(lambda: _ours(double)["Programmed"]["status"] == "False")
    programmed = _ours(double)["Programmed"]
    assert programmed["reason"] == "EnvoyNACK" and "node node-a" in programmed["message"]
    assert OTHER in _parents(double)
