"""KubeApi's hand-written REST paths against the API server double, and the
lean import of kubernetes-asyncio (kube_core) in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from integration.apiserver_double import ApiServerDouble, find_type
from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.errors import ApiRejected
from nodemesh.k8s_watch.resources import CLUSTERWIDE_ENVOY_CONFIGS, ENVOY_CONFIGS
from nodemesh.k8s_watch.settings import WatchSettings

ROOT = Path(__file__).resolve().parents[1]
CEC = find_type("cilium.io", "v2", "ciliumenvoyconfigs")
CCEC = find_type("cilium.io", "v2", "ciliumclusterwideenvoyconfigs")
EVENTS = find_type("events.k8s.io", "v1", "events")
assert CEC and CCEC and EVENTS


def _config(kind: str, name: str, namespace: str = "") -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta, "spec": {}}


@pytest.fixture
async def api() -> AsyncIterator[tuple[ApiServerDouble, KubeApi]]:
    double = ApiServerDouble()
    double.store.create(CEC, _config("CiliumEnvoyConfig", "split", "shop"))
    double.store.create(CCEC, _config("CiliumClusterwideEnvoyConfig", "everywhere"))
    await double.start()
    client = await make_api_client(double.url)
    yield double, KubeApi(client, WatchSettings(field_manager="nodemesh-test"))
    await client.close()
    await double.stop()


@pytest.mark.parametrize(
    ("spec", "namespace", "name"),
    [(ENVOY_CONFIGS, "shop", "split"), (CLUSTERWIDE_ENVOY_CONFIGS, "", "everywhere")],
)
async def test_patch_status_reaches_the_object(
    api: tuple[ApiServerDouble, KubeApi], spec: Any, namespace: str, name: str
) -> None:
    double, kube = api
    condition = {"type": "Accepted", "status": "False", "reason": "ParseError"}
    await kube.patch_status(spec, namespace, name, {"status": {"conditions": [condition]}})
    rtype = CEC if spec is ENVOY_CONFIGS else CCEC
    stored = double.store.get(rtype, namespace, name)
    assert stored["status"]["conditions"] == [condition]
    assert stored["spec"] == {}  # merge patch of status only


async def test_patch_status_of_a_missing_object_is_rejected(
    api: tuple[ApiServerDouble, KubeApi],
) -> None:
    _, kube = api
    with pytest.raises(ApiRejected) as info:
        await kube.patch_status(ENVOY_CONFIGS, "shop", "absent", {"status": {}})
    assert info.value.code == 404


async def test_create_event_in_a_namespace(api: tuple[ApiServerDouble, KubeApi]) -> None:
    double, kube = api
    event = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "split.1", "namespace": "shop"},
        "regarding": {"kind": "CiliumEnvoyConfig", "namespace": "shop", "name": "split"},
        "reason": "ParseError",
        "note": "spec.resources[0]: not an Envoy resource",
        "type": "Warning",
    }
    await kube.create_event("shop", event)
    stored = double.store.get(EVENTS, "shop", "split.1")
    assert stored["reason"] == "ParseError"
    assert stored["regarding"]["name"] == "split"


async def test_list_page_of_a_cluster_scoped_kind(
    api: tuple[ApiServerDouble, KubeApi],
) -> None:
    _, kube = api
    first = await kube.list_page(CLUSTERWIDE_ENVOY_CONFIGS)
    assert [o["metadata"]["name"] for o in first.items] == ["everywhere"]
    assert first.resource_version


LEAN_PROBE = """
import asyncio, json, sys
import nodemesh.k8s_watch.client as nm
# Everything the node agent and `nodemesh serve` import: none of it may pull
# in the generated classes behind kube_core's back.
import nodemesh.wiring.agent, nodemesh.cmd.main, nodemesh.wiring.controlplane
import nodemesh.k8s_watch.source, nodemesh.cmd.k8s_watch, nodemesh.wiring.nacks
from integration.apiserver_double import ApiServerDouble, find_type
from nodemesh.k8s_watch.resources import SERVICES
from nodemesh.k8s_watch.settings import WatchSettings
from nodemesh.k8s_watch.watching import list_all

def loaded(prefix):
    return sorted(m for m in sys.modules if m.startswith(prefix))

out = {"lean_api": loaded("kubernetes_asyncio.client.api"),
       "lean_models": loaded("kubernetes_asyncio.client.models.")}

async def main():
    double = ApiServerDouble()
    svc = find_type("", "v1", "services")
    for i in range(3):
        double.store.create(svc, {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"s{i}", "namespace": "default"},
            "spec": {"clusterIP": f"10.96.0.{i + 1}", "ports": [{"port": 80}]}})
    await double.start()
    client = await nm.make_api_client(double.url)
    try:
        raw = await list_all(nm.KubeApi(client, WatchSettings()), SERVICES)
        out["raw_before_full"] = len(raw.items)
        out["lean_after_raw"] = loaded("kubernetes_asyncio.client.models.")
        # Anything else of the package loads the real thing in place.
        from kubernetes_asyncio import client as k8s, watch
        typed = await k8s.CoreV1Api(client).list_service_for_all_namespaces()
        out["typed"] = [type(i).__name__ for i in typed.items]
        out["watch"] = watch.Watch.__name__
        import kubernetes_asyncio
        out["version"] = kubernetes_asyncio.__version__
        out["same_api_client"] = k8s.ApiClient is nm.ApiClient
    finally:
        await client.close()
        await double.stop()

asyncio.run(main())
print(json.dumps(out))
"""


def test_lean_import_then_the_full_client_on_demand() -> None:
    # cwd: `python -c` puts it first on the path, for `integration.apiserver_double`.
    proc = subprocess.run(
        [sys.executable, "-c", LEAN_PROBE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # The agent's path: no generated API class or model module imported.
    assert out["lean_api"] == ["kubernetes_asyncio.client.api_client"]
    assert out["lean_models"] == []
    assert out["raw_before_full"] == 3
    assert out["lean_after_raw"] == []
    # Other code in the same process still gets the whole, working client.
    assert out["typed"] == ["V1Service"] * 3
    assert out["watch"] == "Watch"
    assert out["version"]
    assert out["same_api_client"] is True
