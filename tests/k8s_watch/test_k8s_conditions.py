"""Conditions from real models built by the real store."""

from __future__ import annotations

from typing import Any

from nodemesh.k8s_watch.conditions import NackReport, conditions_for
from nodemesh.model.objects import Kind, ObjectRef
from nodemesh.model.store import MeshStore
from tests.support import factory

ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def _svc(name: str) -> dict[str, Any]:
    return factory.k8s_service(name, cluster_ip="10.96.0.1")


def _cec(name: str, service: str, created: str) -> dict[str, Any]:
    services = [{"name": service, "namespace": "default"}]
    resources = [factory.route_config("r")]
    return factory.cec(name, services=services, resources=resources, created=created)


def _ref(name: str) -> ObjectRef:
    return ObjectRef(Kind.ENVOY_CONFIG, "default", name)


def test_reasons_for_missing_service_conflict_and_bad_spec() -> None:
    store = MeshStore()
    store.apply("t", _svc("web"))
    store.apply("t", _cec("first", "web", "2024-01-01T00:00:00Z"))
    store.apply("t", _cec("second", "web", "2024-01-02T00:00:00Z"))
    store.apply("t", _cec("lost", "nowhere", "2024-01-01T00:00:00Z"))
    broken = _cec("broken", "web", "2024-01-03T00:00:00Z")
    broken["spec"]["services"] = "web"
    store.apply("t", broken)
    conds = conditions_for(store.build())

    accepted, programmed = conds[_ref("first")]
    assert (accepted.status, programmed.status) == ("True", "True")
    accepted, _ = conds[_ref("second")]
    assert (accepted.status, accepted.reason) == ("False", "Conflict")
    assert "default/first" in accepted.message
    accepted, programmed = conds[_ref("lost")]
    assert (accepted.reason, programmed.reason) == ("ServiceNotFound", "NotAccepted")
    accepted, _ = conds[_ref("broken")]
    assert (accepted.reason, accepted.status) == ("InvalidSpec", "False")
    assert "spec.services" in accepted.message


def test_nack_is_attributed_by_qualified_name_only_to_its_owner() -> None:
    store = MeshStore()
    store.apply("t", _svc("web"))
    store.apply("t", _svc("api"))
    store.apply("t", _cec("a", "web", "2024-01-01T00:00:00Z"))
    store.apply("t", _cec("b", "api", "2024-01-01T00:00:00Z"))
    nack = NackReport("node-1", ROUTE, ("default/a/r", "default/b/r"), "default/a/r: bad regex")
    conds = conditions_for(store.build(), [nack])
    _, programmed_a = conds[_ref("a")]
    _, programmed_b = conds[_ref("b")]
    assert (programmed_a.status, programmed_a.reason) == ("False", "EnvoyNACK")
    assert "node node-1 rejected RouteConfiguration: default/a/r: bad regex" in programmed_a.message
    assert programmed_b.status == "True", "Envoy named a's resource, not b's"
