"""Held removals on the wire (issue 10, item 1): a route or cluster the
client ACKed is not withdrawn while what replaces it is unACKed or NACKed;
it goes once the replacement is ACKed. The real-Envoy side is
test_ads_envoy_held_removal.py."""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh.xds.cache import CLUSTER, LISTENER, ROUTE
from tests.xds.server.ads_harness import (
    Harness,
    cluster,
    listener,
    names_of,
    publish,
    route,
    wait_until,
)

KEY = "node-1"


async def test_delta_route_removal_waits_for_the_replacement_ack(harness: Harness) -> None:
    publish(harness.cache, KEY, {ROUTE: {"old": route("old", {"a": 100})}}, "m1")
    client = await harness.delta()
    await client.request(ROUTE, subscribe=["old", "new"])
    first = await client.recv()
    assert names_of(first) == ["old"]
    await client.ack(first)
    publish(harness.cache, KEY, {ROUTE: {"new": route("new", {"a": 100})}}, "m2")
    moved = await client.recv()
    assert names_of(moved) == ["new"]
    assert list(moved.removed_resources) == []  # "old" is held
    await client.nack(moved, "route 'new' rejected")
    # A later version that Envoy also rejects: "old" still held.
    publish(harness.cache, KEY, {ROUTE: {"new": route("new", {"b": 100})}}, "m3")
    again = await client.recv()
    assert names_of(again) == ["new"] and list(again.removed_resources) == []
    await client.ack(again)
    released = await client.recv()
    assert list(released.removed_resources) == ["old"]
    await client.close()


@pytest.mark.parametrize("api", ["sotw", "delta"])
async def test_cluster_removal_waits_for_the_replacement_ack(harness: Harness, api: str) -> None:
    publish(harness.cache, KEY, {CLUSTER: {"old": cluster("old", eds=False)}}, "m1")
    client = await harness.client(api)
    await client.request(CLUSTER)
    first = await client.recv()
    await client.ack(first)
    publish(harness.cache, KEY, {CLUSTER: {"new": cluster("new", eds=False)}}, "m2")
    moved = await client.recv()
    if api == "sotw":
        assert names_of(moved) == ["new", "old"]  # full state: "old" sent again
        await client.nack(moved, first.version_info, "cluster 'new' rejected")
    else:
        assert names_of(moved) == ["new"] and list(moved.removed_resources) == []
        await client.nack(moved, "cluster 'new' rejected")
    [status] = harness.server.clients()
    assert "old" in status.types[CLUSTER].resource_names
    publish(harness.cache, KEY, {CLUSTER: {"new": cluster("new", eds=False, timeout_s=2)}}, "m3")
    fixed = await client.recv()
    await client.ack(fixed)
    released = await client.recv()
    if api == "sotw":
        assert names_of(released) == ["new"]
    else:
        assert list(released.removed_resources) == ["old"]
    await client.close()


@pytest.mark.parametrize("api", ["sotw", "delta"])
async def test_cache_holds_listener_removal_until_released(harness: Harness, api: str) -> None:
    """The node agent's barrier: removals wait for the kernel, not only for
    the client's ACK of the replacement."""
    publish(harness.cache, KEY, {LISTENER: {"old": listener("old", 10001, "r")}}, "m1")
    client = await harness.client(api)
    await client.request(LISTENER)
    first = await client.recv()
    await client.ack(first)
    harness.cache.hold_removals()
    publish(harness.cache, KEY, {LISTENER: {"new": listener("new", 10002, "r")}}, "m2")
    moved = await client.recv()
    await client.ack(moved)
    assert names_of(moved) == (["new", "old"] if api == "sotw" else ["new"])
    await wait_until(lambda: not _lds(harness).pending, what="ACK recorded")
    assert "old" in _lds(harness).resource_names  # ACKed, but still held
    assert client.queue.empty()
    harness.cache.release_removals()
    released = await client.recv()
    if api == "sotw":
        assert names_of(released) == ["new"]
    else:
        assert list(released.removed_resources) == ["old"]
    await client.close()


def _lds(harness: Harness) -> Any:
    [client] = harness.server.clients()
    return client.types[LISTENER]
