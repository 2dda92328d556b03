"""The API server double's own wire protocol, over raw HTTP: what the client
tests do not reach (selectors leaving/entering, generation, status, 410 on list)."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from integration.apiserver_double import ApiServerDouble, find_type

POD = find_type("", "v1", "pods")
CEC = find_type("cilium.io", "v2", "ciliumenvoyconfigs")
assert POD and CEC


def _pod(name: str, node: str, app: str = "web") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {"nodeName": node},
    }


@pytest.fixture
async def double() -> AsyncIterator[ApiServerDouble]:
    server = ApiServerDouble(bookmark_interval=60)
    await server.start()
    yield server
    await server.stop()


async def _events(session: aiohttp.ClientSession, url: str, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with session.get(url) as resp:
        assert resp.status == 200
        async for line in resp.content:
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


async def test_field_selector_turns_moves_into_added_and_deleted(double: ApiServerDouble) -> None:
    created = double.store.create(POD, _pod("p", "node-a"))
    rv = created["metadata"]["resourceVersion"]
    moved = copy.deepcopy(created)
    moved["spec"]["nodeName"] = "node-b"
    double.store.update(POD, moved)
    back = copy.deepcopy(double.store.get(POD, "default", "p"))
    back["spec"]["nodeName"] = "node-a"
    double.store.update(POD, back)
    url = (
        f"{double.url}/api/v1/pods?watch=true&resourceVersion={rv}"
        "&fieldSelector=spec.nodeName%3Dnode-a"
    )
    async with aiohttp.ClientSession() as session:
        events = await _events(session, url, 2)
    assert [e["type"] for e in events] == ["DELETED", "ADDED"]


async def test_label_selector_filters_lists(double: ApiServerDouble) -> None:
    double.store.create(POD, _pod("a", "n", app="web"))
    double.store.create(POD, _pod("b", "n", app="db"))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{double.url}/api/v1/pods?labelSelector=app%3Ddb") as resp,
    ):
        body = await resp.json()
    assert [i["metadata"]["name"] for i in body["items"]] == ["b"]
    assert "kind" not in body["items"][0], "list items carry no kind, as kube-apiserver's"


async def test_generation_moves_with_spec_not_status(double: ApiServerDouble) -> None:
    cec = {"metadata": {"name": "c", "namespace": "default"}, "spec": {"services": []}}
    created = double.store.create(CEC, cec)
    assert created["metadata"]["generation"] == 1
    url = f"{double.url}/apis/cilium.io/v2/namespaces/default/ciliumenvoyconfigs/c/status"
    patch = {"status": {"conditions": [{"type": "Accepted", "status": "True"}]}}
    headers = {"Content-Type": "application/merge-patch+json"}
    async with aiohttp.ClientSession() as session:
        async with session.patch(url, data=json.dumps(patch), headers=headers) as resp:
            patched = await resp.json()
        assert resp.status == 200
        assert patched["metadata"]["generation"] == 1
        assert patched["status"]["conditions"][0]["type"] == "Accepted"
        async with session.patch(url, json=patch) as resp:
            assert resp.status == 415  # only merge patch is spoken here
    spec_change = copy.deepcopy(double.store.get(CEC, "default", "c"))
    spec_change["spec"]["services"] = [{"name": "x"}]
    spec_change["status"] = {}  # ignored by the main resource: status is a subresource
    updated = double.store.update(CEC, spec_change)
    assert updated["metadata"]["generation"] == 2
    assert updated["status"]["conditions"][0]["type"] == "Accepted"


async def test_compacted_history_is_410_on_watch_and_exact_list(double: ApiServerDouble) -> None:
    old = double.store.create(POD, _pod("p", "n"))["metadata"]["resourceVersion"]
    double.store.create(POD, _pod("q", "n"))
    double.compact()
    async with aiohttp.ClientSession() as session:
        (event,) = await _events(
            session, f"{double.url}/api/v1/pods?watch=1&resourceVersion={old}", 1
        )
        url = f"{double.url}/api/v1/pods?resourceVersion={old}&resourceVersionMatch=Exact"
        async with session.get(url) as resp:
            status = await resp.json()
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    assert resp.status == 410 and status["reason"] == "Expired"


async def test_bad_resource_version_is_a_400(double: ApiServerDouble) -> None:
    async with aiohttp.ClientSession() as session:
        for query in (
            "watch=1&resourceVersion=abc",
            "resourceVersion=abc&resourceVersionMatch=Exact",
        ):
            async with session.get(f"{double.url}/api/v1/pods?{query}") as resp:
                status = await resp.json()
            assert resp.status == 400 and status["reason"] == "BadRequest", query
