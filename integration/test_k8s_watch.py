"""The watcher against the API server double, with kubernetes-asyncio as the
client: only faults a real API server cannot be made to produce on demand
(an unparseable watch line, a watch cut while the server keeps its history)
and exact-count checks (one relist, no duplicate) at points the test picks.
The everyday cases run against the real kube-apiserver in
integration/cluster/test_cluster_watch_flow.py and test_cluster_watch.py."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from integration.apiserver_double import ApiServerDouble, find_type
from integration.apiserver_double.synthetic import endpoint_slice
from integration.k8s_support import Recorder, running_source, seed
from nodemesh.k8s_watch.resources import SERVICES
from tests.support import factory
from tests.support.polling import wait_until_async

SVC = find_type("", "v1", "services")
EPS = find_type("discovery.k8s.io", "v1", "endpointslices")
POD = find_type("", "v1", "pods")
assert SVC and EPS and POD


@pytest.fixture
async def double() -> AsyncIterator[ApiServerDouble]:
    server = ApiServerDouble(bookmark_interval=0.5)
    seed(server, services=7)
    await server.start()
    yield server
    await server.stop()


def _svc(name: str, ip: str) -> dict[str, object]:
    return factory.k8s_service(name, cluster_ip=ip, ports=[factory.port(80, protocol="TCP")])


async def test_dropped_watch_resumes_without_relist_or_duplicates(double: ApiServerDouble) -> None:
    sink = Recorder()
    async with running_source(double, sink, resources=(SERVICES,)):
        double.drop_watches()
        # Changes made while the watch is down arrive through the resumed watch.
        double.store.create(SVC, _svc("during-drop", "10.96.2.1"))
        double.store.delete(SVC, "default", "svc1")
        await wait_until_async(lambda: "default/during-drop" in sink.names("Service"))
        await wait_until_async(lambda: "default/svc1" not in sink.names("Service"))
        watches = [p for m, p in double.requests if p == "/api/v1/services"]
        assert len(watches) >= 2
    relists = [c for c in sink.calls if c[0] == "replace_all"]
    assert len(relists) == 1, "a dropped watch resumes from its resourceVersion, no relist"
    applies = [c for c in sink.calls if c == ("apply", "Service", "default/during-drop")]
    assert len(applies) == 1


async def test_gone_relists_and_converges(double: ApiServerDouble) -> None:
    sink = Recorder()
    async with running_source(double, sink, resources=(SERVICES,)):
        double.drop_watches()
        # Everything below happens while no watch is open, then history is
        # compacted: only a relist can learn it, and it must converge exactly.
        double.store.create(SVC, _svc("after-compact", "10.96.3.1"))
        double.store.delete(SVC, "default", "svc2")
        changed = copy.deepcopy(double.store.get(SVC, "default", "svc3"))
        changed["spec"]["clusterIP"] = "10.96.3.3"
        double.store.update(SVC, changed)
        double.compact()
        await wait_until_async(lambda: "default/after-compact" in sink.names("Service"))
        want = {f"default/{o['metadata']['name']}" for o in double.store.items(SVC)}
        await wait_until_async(lambda: sink.names("Service") == want)
        assert (sink.get("Service", "default", "svc3") or {})["spec"]["clusterIP"] == "10.96.3.3"
    assert sum(1 for c in sink.calls if c[0] == "replace_all") >= 2


def _bookmarks(resource: str) -> float:
    value = REGISTRY.get_sample_value(
        "nodemesh_k8s_watch_events_total", {"resource": resource, "type": "BOOKMARK"}
    )
    return value or 0.0


async def test_bookmarks_keep_the_resume_point_fresh(double: ApiServerDouble) -> None:
    sink = Recorder()
    async with running_source(double, sink, resources=(SERVICES,)):
        # Writes elsewhere move the global resourceVersion past the last Service.
        double.store.create(EPS, endpoint_slice("default", "elsewhere", ["10.244.1.1"]))
        seen = _bookmarks(str(SERVICES))
        # Two: the first may have been sent before the write and only read after it.
        await wait_until_async(
            lambda: _bookmarks(str(SERVICES)) >= seen + 2, what="bookmarks arrived"
        )
        # History up to now is gone; a watch resumed from the last Service's own
        # resourceVersion would get 410, one resumed from the bookmark does not.
        double.compact()
        double.drop_watches()
        double.store.create(SVC, _svc("after-bookmark", "10.96.5.1"))
        await wait_until_async(lambda: "default/after-bookmark" in sink.names("Service"))
    assert sum(1 for c in sink.calls if c[0] == "replace_all") == 1, "no relist was needed"


async def test_broken_watch_line_is_skipped_and_the_rest_flows(double: ApiServerDouble) -> None:
    sink = Recorder()
    async with running_source(double, sink, resources=(SERVICES,)):
        double.store.inject_raw(SVC, b'{"type": "ADDED", "object": {"metadata": ')
        double.store.inject_raw(SVC, b'{"type": "SURPRISE", "object": {}}')
        nameless = {"type": "ADDED", "object": {"kind": "Service", "metadata": {}}}
        double.store.inject_raw(SVC, json.dumps(nameless).encode())
        double.store.create(SVC, _svc("after-garbage", "10.96.4.1"))
        await wait_until_async(lambda: "default/after-garbage" in sink.names("Service"))
    assert len(sink.names("Service")) == 8


async def test_expired_continue_token_restarts_the_list(double: ApiServerDouble) -> None:
    sink = Recorder()
    double.fail("/api/v1/services", 410, times=1, with_query="continue")
    async with running_source(double, sink, resources=(SERVICES,)):
        assert sink.names("Service") == {f"default/svc{i}" for i in range(7)}
    firsts = [m for m, p in double.requests if m == "GET" and p == "/api/v1/services"]
    assert len(firsts) >= 5, "the paged list ran again from its first page"
