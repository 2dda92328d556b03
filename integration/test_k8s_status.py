"""Conditions and Events written back, with the real store, client and double."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from integration.apiserver_double import ApiServerDouble, find_type
from integration.k8s_support import FAST
from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.conditions import NackReport
from nodemesh.k8s_watch.source import KubernetesSource
from nodemesh.model.store import MeshStore
from nodemesh.xds.translate.envoy_config import validate_envoy_config
from tests.support import factory
from tests.support.polling import wait_until_async

SVC = find_type("", "v1", "services")
CEC = find_type("cilium.io", "v2", "ciliumenvoyconfigs")
CNP = find_type("cilium.io", "v2", "ciliumnetworkpolicies")
EVENTS = find_type("events.k8s.io", "v1", "events")
assert SVC and CEC and CNP and EVENTS

ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def _service(name: str, ip: str, port: Any = 80) -> dict[str, Any]:
    app = {"app": name}
    ports = [factory.port(port)]
    return factory.k8s_service(name, cluster_ip=ip, ports=ports, selector=app, labels=app)


def _cec(name: str, service: str) -> dict[str, Any]:
    route = factory.route_config(f"{name}-route", "default/backend")
    services = [{"name": service, "namespace": "default"}]
    return factory.cec(name, services=services, resources=[route])


@dataclass
class Nacks:
    reports: list[NackReport] = field(default_factory=list)

    def nacks(self) -> Iterable[NackReport]:
        return list(self.reports)


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


class CountingStore(MeshStore):
    """The real store, counting what the watcher applies to it."""

    def __init__(self) -> None:
        super().__init__(validators=[validate_envoy_config])
        self.applied: list[tuple[str, str]] = []

    def apply(self, source: str, raw: Mapping[str, Any]) -> None:
        self.applied.append((raw["kind"], raw["metadata"]["name"]))
        super().apply(source, raw)


def _seen_conditions(source: KubernetesSource, name: str) -> set[str]:
    meta = source.watch.lookup("CiliumEnvoyConfig", "default", name)
    return {str(c.get("type")) for c in meta.conditions} if meta else set()


def _conditions(double: ApiServerDouble, name: str) -> dict[str, dict[str, Any]]:
    obj = double.store.get(CEC, "default", name)
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def _events(double: ApiServerDouble, name: str) -> list[dict[str, Any]]:
    return [e for e in double.store.items(EVENTS) if e["regarding"]["name"] == name]


def _status_patches(double: ApiServerDouble, name: str) -> int:
    path = f"/apis/cilium.io/v2/namespaces/default/ciliumenvoyconfigs/{name}/status"
    return sum(1 for m, p in double.requests if m == "PATCH" and p == path)


async def test_bad_cec_gets_conditions_and_events(
    double: ApiServerDouble, mesh: tuple[KubernetesSource, Nacks]
) -> None:
    double.store.create(CEC, _cec("good", "frontend"))
    double.store.create(CEC, _cec("bad", "no-such-service"))
    await wait_until_async(lambda: "Programmed" in _conditions(double, "bad"))
    await wait_until_async(lambda: "Programmed" in _conditions(double, "good"))

    bad = _conditions(double, "bad")
    assert bad["Accepted"]["status"] == "False"
    assert bad["Accepted"]["reason"] == "ServiceNotFound"
    assert "default/no-such-service" in bad["Accepted"]["message"]
    assert bad["Accepted"]["observedGeneration"] == 1
    assert (bad["Programmed"]["status"], bad["Programmed"]["reason"]) == ("False", "NotAccepted")
    good = _conditions(double, "good")
    assert (good["Accepted"]["status"], good["Programmed"]["status"]) == ("True", "True")

    await wait_until_async(lambda: len(_events(double, "bad")) >= 2)
    warning = next(e for e in _events(double, "bad") if e["reason"] == "ServiceNotFound")
    assert warning["type"] == "Warning"
    assert warning["regarding"]["uid"] == double.store.get(CEC, "default", "bad")["metadata"]["uid"]
    assert "no-such-service" in warning["note"]


async def test_status_writes_do_not_loop_and_fixes_show(
    double: ApiServerDouble, mesh: tuple[KubernetesSource, Nacks]
) -> None:
    source, _ = mesh
    assert isinstance(source.store, CountingStore)
    double.store.create(CEC, _cec("bad", "later"))
    await wait_until_async(lambda: "Programmed" in _conditions(double, "bad"))
    writes, model_gen = _status_patches(double, "bad"), source.store.current.generation
    # An unrelated change builds a new model; the CEC's conditions do not change,
    # so nothing is rewritten, and our own status write built no model either.
    double.store.create(SVC, _service("unrelated", "10.96.0.20"))
    await wait_until_async(lambda: source.store.current.generation > model_gen)
    await wait_until_async(lambda: any(p.endswith("/events") for _, p in double.requests))
    gen_after_unrelated = source.store.current.generation
    # Fix the CEC by creating the Service it names: conditions flip to True.
    double.store.create(SVC, _service("later", "10.96.0.21"))
    await wait_until_async(lambda: _conditions(double, "bad")["Accepted"]["status"] == "True")
    assert _status_patches(double, "bad") == writes + 1
    assert source.store.current.generation > gen_after_unrelated
    # Our status writes came back on the watch (the informer saw them), yet
    # only the CEC's one real change (its creation) was applied to the store.
    await wait_until_async(
        lambda: _seen_conditions(source, "bad") == _conditions(double, "bad").keys()
    )
    assert isinstance(source.store, CountingStore)
    assert source.store.applied.count(("CiliumEnvoyConfig", "bad")) == 1


async def test_nack_from_a_node_sets_programmed_false(
    double: ApiServerDouble, mesh: tuple[KubernetesSource, Nacks]
) -> None:
    source, nacks = mesh
    double.store.create(CEC, _cec("split", "frontend"))
    await wait_until_async(
        lambda: _conditions(double, "split").get("Programmed", {}).get("status") == "True"
    )
    nacks.reports.append(
        NackReport(
            "node-a",
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ("default/split/split-route",),
            "Unknown cluster 'default/backend'",
        )
    )
    source.nacks_changed()
    await wait_until_async(lambda: _conditions(double, "split")["Programmed"]["status"] == "False")
    programmed = _conditions(double, "split")["Programmed"]
    assert programmed["reason"] == "EnvoyNACK"
    assert "node node-a" in programmed["message"]
    assert "Unknown cluster 'default/backend'" in programmed["message"]
    nacks.reports.clear()
    source.nacks_changed()
    await wait_until_async(lambda: _conditions(double, "split")["Programmed"]["status"] == "True")


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
