"""Translation rejections as a metric and a log event: the gauge follows the
current errors (back to 0 when fixed), and each rejection is logged once."""

from __future__ import annotations

from typing import Any

import prometheus_client
from structlog.testing import capture_logs

from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig
from tests.support import factory


def cec(cluster: str) -> dict[str, Any]:
    route = factory.route_config("r", cluster, host="all")
    services = [{"name": "web", "namespace": "default"}]
    return factory.cec("web-l7", services=services, resources=[route])


SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}], "selector": {"app": "web"}},
}


def gauge() -> float | None:
    return prometheus_client.REGISTRY.get_sample_value(
        "nodemesh_translate_object_errors", {"kind": "CiliumEnvoyConfig"}
    )


def test_gauge_clears_and_each_rejection_is_logged_once() -> None:
    plane = ControlPlane(ControlPlaneConfig(xds_tcp=None, admin_port=0))
    plane.store.apply("t", SERVICE)
    plane.store.apply("t", cec("default/missing"))
    with capture_logs() as logs:
        plane.publish(plane.store.build())
        plane.store.apply(
            "t", {**SERVICE, "metadata": {**SERVICE["metadata"], "labels": {"a": "b"}}}
        )
        plane.publish(plane.store.build())  # same rejection, another model version
    assert plane.translation is not None
    rejected = [e for e in plane.translation.errors if e.ref.kind.value == "CiliumEnvoyConfig"]
    assert rejected and gauge() == len(rejected)
    # Logged once each, though published twice.
    assert sum(e["event"] == "object_rejected" for e in logs) == len(rejected)
    plane.store.apply("t", cec("default/web"))
    plane.publish(plane.store.build())
    assert gauge() == 0
