from __future__ import annotations

from nodemesh.k8s_watch.errors import ApiUnavailable
from nodemesh.k8s_watch.health import WatchHealth


def test_readiness_says_which_resource_is_stale_and_why() -> None:
    health = WatchHealth()
    health.register("services")
    health.register("pods")
    assert not health.synced and not health.ready
    assert any("initial list" in r for r in health.reasons())
    health.ok("services", listed=True)
    health.ok("pods", listed=True)
    assert health.ready and health.reasons() == [] and health.synced_event.is_set()
    health.failed("pods", ApiUnavailable("connection refused"))
    assert health.synced and not health.ready
    (reason,) = health.reasons()
    assert reason.startswith("pods: serving last known state; failing since ")
    assert "connection refused" in reason
    health.ok("pods")
    assert health.ready
    assert health.as_dict()["resources"]["pods"]["error"] is None
