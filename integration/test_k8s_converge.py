"""Random churn with faults in between: whatever happens, the sink ends up
holding exactly what the API server holds (nothing dropped, nothing stale)."""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import AsyncIterator

import pytest

from integration.apiserver_double import ApiServerDouble, find_type
from integration.apiserver_double.synthetic import endpoint_slice
from integration.k8s_support import Recorder, running_source, seed
from nodemesh.k8s_watch.resources import ENDPOINT_SLICES, SERVICES
from tests.support.polling import wait_until_async

SVC = find_type("", "v1", "services")
EPS = find_type("discovery.k8s.io", "v1", "endpointslices")
assert SVC and EPS


@pytest.fixture
async def double() -> AsyncIterator[ApiServerDouble]:
    server = ApiServerDouble(bookmark_interval=0.2)
    seed(server, services=10)
    await server.start()
    yield server
    await server.stop()


def _state(double: ApiServerDouble) -> dict[str, str]:
    """name -> content that matters, per kind, as the API server has it."""
    out = {}
    for o in double.store.items(SVC):
        out[f"Service/{o['metadata']['name']}"] = o["spec"]["clusterIP"]
    for o in double.store.items(EPS):
        out[f"EndpointSlice/{o['metadata']['name']}"] = o["endpoints"][0]["addresses"][0]
    return out


def _seen(sink: Recorder) -> dict[str, str]:
    out = {}
    for (_, kind, _, name), raw in sink.objects.items():
        if kind == "Service":
            out[f"Service/{name}"] = raw["spec"]["clusterIP"]
        else:
            out[f"EndpointSlice/{name}"] = raw["endpoints"][0]["addresses"][0]
    return out


def _mutate(double: ApiServerDouble, rng: random.Random, step: int) -> None:
    kind = rng.choice([SVC, EPS])
    items = double.store.items(kind)
    action = rng.choice(["create", "update", "update", "delete"]) if items else "create"
    if action == "create":
        name = f"r{step}"
        if kind is SVC:
            double.store.create(SVC, {"metadata": {"name": name, "namespace": "default"},
                                      "spec": {"clusterIP": f"10.96.9.{step % 250}"}})  # fmt: skip
        else:
            double.store.create(EPS, endpoint_slice("default", name, [f"10.244.9.{step % 250}"]))
        return
    target = copy.deepcopy(rng.choice(items))
    if action == "delete":
        double.store.delete(kind, "default", target["metadata"]["name"])
    elif kind is SVC:
        target["spec"]["clusterIP"] = f"10.96.8.{step % 250}"
        double.store.update(SVC, target)
    else:
        target["endpoints"][0]["addresses"] = [f"10.244.8.{step % 250}"]
        double.store.update(EPS, target)


@pytest.mark.parametrize("seed_value", [1, 2, 3])
async def test_random_churn_with_faults_converges(double: ApiServerDouble, seed_value: int) -> None:
    rng = random.Random(seed_value)
    sink = Recorder()
    async with running_source(double, sink, resources=(SERVICES, ENDPOINT_SLICES)):
        for step in range(150):
            _mutate(double, rng, step)
            fault = rng.random()
            if fault < 0.05:
                double.drop_watches()
            elif fault < 0.08:
                double.compact()
                double.drop_watches()
            if step % 10 == 0:
                await asyncio.sleep(0.01)  # let the watchers read some of it
        await wait_until_async(lambda: _seen(sink) == _state(double), timeout=60, what="converged")
