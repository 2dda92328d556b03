"""StatusReporter decisions: dedup, rate limit, other nodes' NACKs.

Models come from the real MeshStore; the API side records what would be sent
(the HTTP path itself is covered in integration/test_k8s_status.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nodemesh.k8s_watch.conditions import NackReport
from nodemesh.k8s_watch.informer import ObjectMeta
from nodemesh.k8s_watch.reporter import StatusReporter
from nodemesh.k8s_watch.resources import ResourceSpec
from nodemesh.k8s_watch.settings import WatchSettings
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore
from tests.support import factory

ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


@dataclass
class RecordingApi:
    patches: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    events: list[Mapping[str, Any]] = field(default_factory=list)

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        self.events.append(body)

    async def patch_status(
        self, spec: ResourceSpec, namespace: str, name: str, body: Mapping[str, Any]
    ) -> None:
        self.patches.append((name, body))


@dataclass
class Objects:
    """What the informers would know: uid, generation, current conditions."""

    metas: dict[str, ObjectMeta] = field(default_factory=dict)

    def lookup(self, kind: str, namespace: str, name: str) -> ObjectMeta | None:
        return self.metas.get(name)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _model(service_exists: bool) -> MeshModel:
    store = MeshStore()
    if service_exists:
        store.apply("t", factory.k8s_service("web", cluster_ip="10.96.0.1"))
    services = [{"name": "web", "namespace": "default"}]
    store.apply("t", factory.cec("cec", services=services, resources=[factory.route_config("r")]))
    return store.build()


def _reporter(node: str = "node-a") -> tuple[StatusReporter, RecordingApi, Objects, Clock]:
    api, objects, clock = RecordingApi(), Objects(), Clock()
    objects.metas["cec"] = ObjectMeta("uid-1", 1, ())
    settings = WatchSettings(status_qps=0.2, status_burst=2)
    return (
        StatusReporter(api, objects, node=node, settings=settings, clock=clock),
        api,
        objects,
        clock,
    )


async def test_unchanged_conditions_are_written_once() -> None:
    reporter, api, _, _ = _reporter()
    model = _model(service_exists=False)
    first = await reporter.reconcile(model)
    assert (first.status_writes, first.events) == (1, 2)
    for _ in range(5):
        again = await reporter.reconcile(model)
        assert (again.status_writes, again.events, again.deferred) == (0, 0, 0)
    ((name, body),) = api.patches
    conds = {c["type"]: c for c in body["status"]["conditions"]}
    assert name == "cec" and conds["Accepted"]["reason"] == "ServiceNotFound"
    assert conds["Accepted"]["observedGeneration"] == 1


async def test_flapping_object_is_rate_limited_then_catches_up() -> None:
    reporter, api, _, clock = _reporter()
    bad, good = _model(service_exists=False), _model(service_exists=True)
    results = [await reporter.reconcile(m) for m in (bad, good, bad, good, bad)]
    assert len(api.patches) == 2, "burst of 2, then the bucket is empty"
    # bad, good written; bad deferred; good is what was last written (no write
    # needed); bad deferred again.
    assert [r.deferred for r in results] == [0, 0, 1, 0, 1]
    clock.now += 5.0  # one token at 0.2/s
    caught_up = await reporter.reconcile(bad)
    assert caught_up.status_writes == 1
    conds = {c["type"]: c for c in api.patches[-1][1]["status"]["conditions"]}
    assert conds["Accepted"]["status"] == "False", "the latest state is what gets written"


async def test_another_nodes_nack_is_left_for_that_node_to_clear() -> None:
    reporter, api, objects, _ = _reporter(node="node-a")
    foreign = {
        "type": "Programmed",
        "status": "False",
        "reason": "EnvoyNACK",
        "message": "node node-b rejected RouteConfiguration: bad",
        "observedGeneration": 1,
    }
    accepted = {
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "message": "Accepted by nodemesh",
        "observedGeneration": 1,
    }
    objects.metas["cec"] = ObjectMeta("uid-1", 1, (accepted, foreign))
    result = await reporter.reconcile(_model(service_exists=True))
    assert result.status_writes == 0 and api.patches == []
    # Our own node's NACK is ours to report, beside it.
    nack = NackReport("node-a", ROUTE, ("default/cec/r",), "also bad here")
    result = await reporter.reconcile(_model(service_exists=True), [nack])
    assert result.status_writes == 1
    conds = {c["type"]: c for c in api.patches[-1][1]["status"]["conditions"]}
    assert "node node-a rejected" in conds["Programmed"]["message"]
    event = api.events[-1]
    assert event["type"] == "Warning" and event["reason"] == "EnvoyNACK"
    assert event["regarding"]["uid"] == "uid-1"


async def test_objects_not_from_the_api_server_are_not_reported() -> None:
    reporter, api, objects, _ = _reporter()
    objects.metas.clear()  # e.g. the CEC came from the file source
    result = await reporter.reconcile(_model(service_exists=False))
    assert result.status_writes == 0 and api.patches == [] and api.events == []


def _service_model(port: object) -> MeshModel:
    store = MeshStore()
    store.apply(
        "t",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "svc", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": port}]},
        },
    )
    return store.build()


async def test_rejected_service_gets_one_event_per_distinct_error() -> None:
    reporter, api, objects, _ = _reporter()
    objects.metas["svc"] = ObjectMeta("uid-s", 1, ())
    broken = _service_model("eighty")
    for _ in range(3):
        await reporter.reconcile(broken)
    (event,) = api.events
    assert (event["reason"], event["regarding"]["kind"]) == ("InvalidObject", "Service")
    assert event["note"].startswith("spec.ports[0].port")
    await reporter.reconcile(_service_model(80))  # fixed
    await reporter.reconcile(broken)  # broken again: a new Event
    assert len(api.events) == 2
    objects.metas["svc"] = ObjectMeta("uid-s2", 1, ())  # deleted, created again as broken
    await reporter.reconcile(broken)
    assert len(api.events) == 3


@dataclass
class SharedObject:
    """One CEC as the API server holds it, seen by two agents: each patch
    replaces its conditions (merge patch of a list), as the real server does."""

    conditions: tuple[Mapping[str, Any], ...] = ()
    writes: int = 0

    def lookup(self, kind: str, namespace: str, name: str) -> ObjectMeta | None:
        return ObjectMeta("uid-1", 1, self.conditions) if name == "cec" else None

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        pass

    async def patch_status(
        self, spec: ResourceSpec, namespace: str, name: str, body: Mapping[str, Any]
    ) -> None:
        self.conditions = tuple(body["status"]["conditions"])
        self.writes += 1

    def programmed(self) -> Mapping[str, Any]:
        return next(c for c in self.conditions if c["type"] == "Programmed")


async def test_two_agents_with_their_own_nacks_converge_without_looping() -> None:
    shared = SharedObject()
    settings = WatchSettings(status_qps=100.0, status_burst=100)  # no rate limit: only logic
    agents = {
        node: StatusReporter(shared, shared, node=node, settings=settings)
        for node in ("node-a", "node-b")
    }
    model = _model(service_exists=True)
    nacks = {
        "node-a": [NackReport("node-a", ROUTE, ("default/cec/r",), "bad on a")],
        "node-b": [NackReport("node-b", ROUTE, ("default/cec/r",), "bad on b")],
    }

    async def rounds(n: int) -> int:
        before = shared.writes
        for _ in range(n):
            for node, agent in agents.items():
                await agent.reconcile(model, nacks[node])
        return shared.writes - before

    await rounds(3)
    assert await rounds(5) == 0, "converged: nobody rewrites the other's lines"
    lines = shared.programmed()["message"].split("\n")
    assert lines == [
        "node node-a rejected RouteConfiguration: bad on a",
        "node node-b rejected RouteConfiguration: bad on b",
    ]
    nacks["node-a"] = []  # node-a's Envoy accepts now
    await rounds(3)
    assert await rounds(5) == 0
    assert shared.programmed()["message"] == "node node-b rejected RouteConfiguration: bad on b"
    nacks["node-b"] = []
    await rounds(3)
    assert await rounds(5) == 0
    assert shared.programmed()["status"] == "True"


async def test_recreated_object_gets_its_conditions_again() -> None:
    reporter, api, objects, _ = _reporter()
    model = _model(service_exists=False)
    await reporter.reconcile(model)
    assert len(api.patches) == 1
    # Deleted and created again under the same name before the next model:
    # a new uid, no status yet. The same conditions must be written again.
    objects.metas["cec"] = ObjectMeta("uid-2", 1, ())
    await reporter.reconcile(model)
    assert len(api.patches) == 2


def _policy_model(kind: str, port: object) -> MeshStore:
    store = MeshStore()
    api_version = "cilium.io/v2" if kind.startswith("Cilium") else "networking.k8s.io/v1"
    spec: dict[str, Any] = {"ingress": [{"ports": [{"port": port}]}]}
    if kind.startswith("Cilium"):
        spec = {
            "endpointSelector": {},
            "ingress": [{"toPorts": [{"ports": [{"port": str(port)}]}]}],
        }
    else:
        spec["podSelector"] = {}
    store.apply(
        "t",
        {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": "pol", "namespace": "default"},
            "spec": spec,
        },
    )
    return store


async def test_bad_network_policy_gets_a_warning_event() -> None:
    # A Kubernetes NetworkPolicy has no status: its rejection is an Event.
    reporter, api, objects, _ = _reporter()
    objects.metas["pol"] = ObjectMeta("uid-p", 1, ())
    model = _policy_model("NetworkPolicy", 99999).build()
    await reporter.reconcile(model)
    (event,) = api.events
    assert (event["reason"], event["regarding"]["kind"]) == ("InvalidObject", "NetworkPolicy")
    assert "spec.ingress[0].ports[0].port" in event["note"] and event["type"] == "Warning"


async def test_bad_cilium_network_policy_gets_a_condition() -> None:
    reporter, api, objects, _ = _reporter()
    objects.metas["pol"] = ObjectMeta("uid-p", 1, ())
    await reporter.reconcile(_policy_model("CiliumNetworkPolicy", 70000).build())
    ((name, body),) = api.patches
    accepted = next(c for c in body["status"]["conditions"] if c["type"] == "Accepted")
    assert name == "pol" and accepted["status"] == "False"
    assert "toPorts[0].ports[0].port" in accepted["message"]


async def test_events_are_events_k8s_io_v1_as_the_server_validates_them() -> None:
    """The strict rules the API server applies to events.k8s.io/v1 creates:
    eventTime with microseconds, reportingController/Instance and action set,
    none of the legacy fields, a note of at most 1 KiB in bytes (an Envoy
    NACK message may be longer, and not ASCII)."""
    reporter, api, _, _ = _reporter()
    nack = NackReport("node-a", ROUTE, ("default/cec/r",), "é" * 2000)
    await reporter.reconcile(_model(service_exists=True), [nack])
    event = next(e for e in api.events if e["reason"] == "EnvoyNACK")
    assert (event["apiVersion"], event["kind"]) == ("events.k8s.io/v1", "Event")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["eventTime"])
    assert event["reportingController"] == "nodemesh" and event["reportingInstance"] == "node-a"
    assert event["action"] == "Programmed" and event["regarding"]["uid"] == "uid-1"
    assert not {"involvedObject", "message", "count", "source", "firstTimestamp"} & set(event)
    assert 1000 < len(event["note"].encode()) <= 1024 and event["note"].endswith("é")
