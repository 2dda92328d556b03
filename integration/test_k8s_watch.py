"""The watcher against the API server double, with kubernetes-asyncio as the client."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from integration.apiserver_double import ApiServerDouble, find_type
from integration.apiserver_double.synthetic import endpoint_slice
from integration.k8s_support import FAST, Recorder, running_source, seed
from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.informer_set import InformerSet
from nodemesh.k8s_watch.resources import ENDPOINT_SLICES, PODS, SERVICES, ResourceSpec
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


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "page-by-page"])
async def test_initial_sync_lists_every_page(double: ApiServerDouble, prefetch: bool) -> None:
    sink = Recorder()
    settings = dataclasses.replace(FAST, list_prefetch=prefetch)
    specs = (SERVICES, ENDPOINT_SLICES)
    async with running_source(double, sink, settings, resources=specs) as source:
        assert sink.names("Service") == {f"default/svc{i}" for i in range(7)}
        assert len(sink.names("EndpointSlice")) == 7
        # List items lack kind/apiVersion on the wire; the sink always gets them.
        raw = sink.get("Service", "default", "svc3")
        assert raw is not None and raw["apiVersion"] == "v1"
        assert source.health.ready and source.health.reasons() == []
    lists = [p for m, p in double.requests if m == "GET" and p == "/api/v1/services"]
    assert len(lists) >= 3  # 7 items at page size 3: paging really happened


async def test_add_modify_delete_flow(double: ApiServerDouble) -> None:
    sink = Recorder()
    async with running_source(double, sink, resources=(SERVICES,)):
        double.store.create(SVC, _svc("new", "10.96.1.1"))
        await wait_until_async(lambda: "default/new" in sink.names("Service"))
        changed = copy.deepcopy(double.store.get(SVC, "default", "new"))
        changed["spec"]["clusterIP"] = "10.96.1.2"
        double.store.update(SVC, changed)
        await wait_until_async(
            lambda: (
                (sink.get("Service", "default", "new") or {})["spec"]["clusterIP"] == "10.96.1.2"
            )
        )
        double.store.delete(SVC, "default", "svc0")
        await wait_until_async(lambda: "default/svc0" not in sink.names("Service"))
    assert len(sink.names("Service")) == 7


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


async def test_pod_field_selector_watches_only_this_node(double: ApiServerDouble) -> None:
    def pod(name: str, node: str) -> dict[str, object]:
        return factory.k8s_pod(name, ip="10.244.9.9", labels={"app": "curl"}, node=node)

    double.store.create(POD, pod("mine", "node-a"))
    double.store.create(POD, pod("theirs", "node-b"))
    mine = ResourceSpec("", "v1", "pods", PODS.kind, field_selector="spec.nodeName=node-a")
    sink = Recorder()
    async with running_source(double, sink, resources=(mine,)):
        assert sink.names("Pod") == {"default/mine"}
        double.store.create(POD, pod("mine-2", "node-a"))
        double.store.create(POD, pod("theirs-2", "node-b"))
        await wait_until_async(lambda: "default/mine-2" in sink.names("Pod"))
    assert sink.names("Pod") == {"default/mine", "default/mine-2"}


async def test_forbidden_list_reports_why_then_recovers(double: ApiServerDouble) -> None:
    sink = Recorder()
    # As with a ClusterRole missing "pods": the list is refused a few times.
    double.fail("/api/v1/pods", 403, times=5)
    client = await make_api_client(double.url)
    source = InformerSet(KubeApi(client, FAST), sink, settings=FAST, resources=(SERVICES, PODS))
    task = asyncio.create_task(source.run(), name="watch-source")
    try:
        await wait_until_async(lambda: any("HTTP 403" in r for r in source.health.reasons()))
        (reason,) = [r for r in source.health.reasons() if r.startswith("pods")]
        assert reason.startswith("pods.core/v1: never synced") and "injected 403" in reason
        await source.wait_synced(30)  # the sixth try is allowed
        assert source.health.ready
    finally:
        task.cancel()
        await asyncio.wait([task])
        await client.close()


async def test_expired_continue_token_restarts_the_list(double: ApiServerDouble) -> None:
    sink = Recorder()
    double.fail("/api/v1/services", 410, times=1, with_query="continue")
    async with running_source(double, sink, resources=(SERVICES,)):
        assert sink.names("Service") == {f"default/svc{i}" for i in range(7)}
    firsts = [m for m, p in double.requests if m == "GET" and p == "/api/v1/services"]
    assert len(firsts) >= 5, "the paged list ran again from its first page"


async def test_server_ended_watches_resume_without_relist(double: ApiServerDouble) -> None:
    sink = Recorder()
    settings = dataclasses.replace(FAST, watch_timeout_seconds=1)
    async with running_source(double, sink, settings, resources=(SERVICES,)):

        def watches() -> int:
            return sum(1 for m, p in double.requests if p == "/api/v1/services") - 3

        await wait_until_async(
            lambda: watches() >= 3, what="the server ended watches (timeoutSeconds)"
        )
        double.store.create(SVC, _svc("after-timeouts", "10.96.6.1"))
        await wait_until_async(lambda: "default/after-timeouts" in sink.names("Service"))
    assert sum(1 for c in sink.calls if c[0] == "replace_all") == 1
