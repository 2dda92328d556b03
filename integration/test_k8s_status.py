"""A malformed object, with the real store and client and the API server
double: the one status case a real API server cannot serve (it refuses to
store a Service whose port is not an integer). The other status cases run
against the real server in integration/cluster/test_cluster_status.py,
test_cluster_serve.py and test_cluster_nack.py."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from integration.apiserver_double import ApiServerDouble, find_type
from integration.k8s_support import FAST, CountingStore, Nacks
from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.source import KubernetesSource
from tests.support import factory
from tests.support.polling import wait_until_async

SVC = find_type("", "v1", "services")
EVENTS = find_type("events.k8s.io", "v1", "events")
assert SVC and EVENTS


def _service(name: str, ip: str, port: Any = 80) -> dict[str, Any]:
    app = {"app": name}
    ports = [factory.port(port)]
    return factory.k8s_service(name, cluster_ip=ip, ports=ports, selector=app, labels=app)


@pytest.fixture
async def double() -> AsyncIterator[ApiServerDouble]:
    server = ApiServerDouble(bookmark_interval=0.5)
    for name, ip in (("frontend", "10.96.0.10"), ("backend", "10.96.0.11")):
        server.store.create(SVC, _service(name, ip))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def mesh(double: ApiServerDouble) -> AsyncIterator[tuple[KubernetesSource, Nacks]]:
    client = await make_api_client(double.url)
    store = CountingStore()
    nacks = Nacks()
    source = KubernetesSource(
        KubeApi(client, FAST), store, node="node-a", settings=FAST, nacks=nacks, retry_interval=0.2
    )
    task = asyncio.create_task(source.run(), name="k8s-source")
    await source.watch.wait_synced(30)
    yield source, nacks
    task.cancel()
    await asyncio.wait([task])
    await client.close()
    assert task.cancelled(), task.exception()


def _events(double: ApiServerDouble, name: str) -> list[dict[str, Any]]:
    return [e for e in double.store.items(EVENTS) if e["regarding"]["name"] == name]


async def test_malformed_service_gets_an_event_and_the_rest_flows(
    double: ApiServerDouble, mesh: tuple[KubernetesSource, Nacks]
) -> None:
    source, _ = mesh
    double.store.create(SVC, _service("broken", "10.96.0.30", port="eighty"))
    double.store.create(SVC, _service("fine", "10.96.0.31"))
    await wait_until_async(lambda: any(s.name == "fine" for s in source.store.current.services))
    names = {s.name for s in source.store.current.services}
    assert "broken" not in names and {"frontend", "backend"} <= names
    await wait_until_async(lambda: len(_events(double, "broken")) == 1)
    event = _events(double, "broken")[0]
    assert (event["type"], event["reason"]) == ("Warning", "InvalidObject")
    uid = double.store.get(SVC, "default", "broken")["metadata"]["uid"]
    assert event["regarding"]["uid"] == uid, "kubectl describe finds it by uid"
    assert "spec.ports[0].port" in event["note"]
    broken = copy.deepcopy(double.store.get(SVC, "default", "broken"))
    broken["spec"]["ports"] = [{"port": 80}]
    double.store.update(SVC, broken)
    await wait_until_async(lambda: any(s.name == "broken" for s in source.store.current.services))
