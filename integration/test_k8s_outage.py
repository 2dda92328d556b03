"""The API server goes away for a real outage and comes back.

NODEMESH_K8S_OUTAGE_SECONDS sets the outage (default 30, as the issue asks).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from integration.apiserver_double import ApiServerDouble, find_type
from integration.k8s_support import FAST, running_source, seed
from nodemesh.k8s_watch.resources import ENDPOINT_SLICES, SERVICES
from nodemesh.model.objects import ServiceName
from nodemesh.model.store import MeshStore
from tests.support.polling import wait_until_async

OUTAGE = float(os.environ.get("NODEMESH_K8S_OUTAGE_SECONDS", "30"))
SVC = find_type("", "v1", "services")
assert SVC


@pytest.fixture
async def double() -> AsyncIterator[ApiServerDouble]:
    server = ApiServerDouble(bookmark_interval=0.5)
    seed(server, services=6)
    await server.start()
    yield server
    await server.stop()


@pytest.mark.timeout(OUTAGE + 120)
async def test_outage_serves_last_state_then_converges(double: ApiServerDouble) -> None:
    store = MeshStore()
    async with running_source(double, store, FAST, resources=(SERVICES, ENDPOINT_SLICES)) as src:
        before = store.build()
        assert len(before.services) == 6
        assert before.backends_of(ServiceName("default", "svc0"), 80)

        loop = asyncio.get_running_loop()
        await double.stop()
        await wait_until_async(lambda: not src.health.ready, what="readiness notices the outage")
        reasons = " ".join(src.health.reasons())
        assert "serving last known state" in reasons and "ApiUnavailable" in reasons

        # The cluster changes while we cannot see it, and its history is compacted.
        double.store.delete(SVC, "default", "svc5")
        double.store.create(
            SVC,
            {
                "metadata": {"name": "born-in-outage", "namespace": "default"},
                "spec": {"clusterIP": "10.96.7.7", "ports": [{"port": 80}]},
            },
        )
        double.compact()

        deadline = loop.time() + OUTAGE
        checks = 0
        while loop.time() < deadline:
            model = store.build()
            assert model.version == before.version, "nothing is torn down during the outage"
            assert not src.health.ready
            checks += 1
            await asyncio.sleep(0.5)
        assert checks > 1

        await double.start()
        await wait_until_async(lambda: src.health.ready, timeout=60, what="ready after the outage")
        want = {
            ServiceName("default", n) for n in [f"svc{i}" for i in range(5)] + ["born-in-outage"]
        }
        await wait_until_async(lambda: set(store.build().services) == want, timeout=30)
        assert src.health.reasons() == []
