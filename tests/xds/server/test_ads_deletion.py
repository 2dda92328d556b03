"""Deletion semantics per type, delta reconnects and unsubscriptions."""

from __future__ import annotations

from nodemesh.xds.cache import CLUSTER, ENDPOINT, SnapshotCache
from tests.xds.server.ads_harness import Harness, mesh, names_of, publish, wait_until


async def test_sotw_cds_absence_is_deletion(harness: Harness) -> None:
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    client = await harness.sotw()
    await client.request(CLUSTER)
    first = await client.recv()
    assert names_of(first) == ["a", "b"]
    await client.ack(first)
    publish(harness.cache, "node-1", mesh(clusters=("a",)), "v2")
    second = await client.recv()
    assert names_of(second) == ["a"]  # full state: b is gone
    await client.close()


async def test_sotw_eds_removed_resource_is_just_not_sent(harness: Harness) -> None:
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    client = await harness.sotw()
    await client.request(ENDPOINT, ["a", "b"])
    first = await client.recv()
    await client.ack(first, ["a", "b"])
    publish(harness.cache, "node-1", mesh(clusters=("a",)), "v2")
    second = await client.recv()
    assert names_of(second) == ["a"]
    await client.close()


async def test_delta_removal_is_announced(harness: Harness) -> None:
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    client = await harness.delta()
    await client.request(ENDPOINT, subscribe=["a", "b"])
    first = await client.recv()
    await client.ack(first)
    publish(harness.cache, "node-1", mesh(clusters=("a",)), "v2")
    second = await client.recv()
    assert list(second.removed_resources) == ["b"]
    assert names_of(second) == []
    await client.close()


async def test_delta_initial_resource_versions(harness: Harness) -> None:
    """A reconnecting delta client gets only what differs from what it holds,
    and removals of names it holds that no longer exist."""
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    held = {
        n: r.version
        for n, r in harness.cache.snapshot("node-1").get(ENDPOINT).items()  # type: ignore[union-attr]
    }
    client = await harness.delta()
    await client.request(
        ENDPOINT,
        subscribe=["a", "b", "c"],
        initial={"a": held["a"], "b": "outdated", "gone": "x"},
    )
    resp = await client.recv()
    assert names_of(resp) == ["b"]
    await client.close()
    # wildcard with a stale holding of a deleted cluster
    client = await harness.delta()
    versions = {n: r.version for n, r in harness.cache.snapshot("node-1").get(CLUSTER).items()}  # type: ignore[union-attr]
    await client.request(CLUSTER, subscribe=["*"], initial={**versions, "deleted": "v0"})
    resp = await client.recv()
    assert names_of(resp) == []
    assert list(resp.removed_resources) == ["deleted"]
    await client.close()


async def test_delta_unsubscribe_of_never_held_name_is_harmless(harness: Harness) -> None:
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    client = await harness.delta()
    await client.request(ENDPOINT, subscribe=["a"])
    first = await client.recv()
    await client.ack(first)
    await client.request(ENDPOINT, unsubscribe=["never-had"])
    await client.request(ENDPOINT, subscribe=["b"])
    second = await client.recv()
    assert names_of(second) == ["b"]
    await client.close()


async def test_delta_unsubscribed_name_gets_no_updates(harness: Harness) -> None:
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    client = await harness.delta()
    await client.request(ENDPOINT, subscribe=["a", "b"])
    first = await client.recv()
    await client.ack(first)
    await client.request(ENDPOINT, unsubscribe=["b"])
    # The change below is pushed at once (leading edge): the request must
    # have landed first, or the push rightly goes to the old subscription.
    await wait_until(
        lambda: harness.server.clients()[0].types[ENDPOINT].subscribed == ("a",),
        what="b unsubscribed",
    )
    changed = mesh(clusters=("a", "b"), port=1)
    changed[ENDPOINT] = {
        "a": mesh(clusters=("z", "a"))[ENDPOINT]["a"],
        "b": mesh(clusters=("z", "b"))[ENDPOINT]["b"],
    }
    publish(harness.cache, "node-1", changed, "v2")
    second = await client.recv()
    assert names_of(second) == ["a"]
    await client.close()


async def test_sotw_reconnect_with_current_version_gets_no_push(harness: Harness) -> None:
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    client = await harness.sotw()
    await client.request(CLUSTER)
    first = await client.recv()
    await client.ack(first)
    await client.close()
    again = await harness.sotw()
    await again.request(CLUSTER, version=first.version_info)
    # the next response is the one caused by a real change, not a re-push
    publish(harness.cache, "node-1", mesh(clusters=("a", "c")), "v2")
    nxt = await again.recv()
    assert names_of(nxt) == ["a", "c"]
    await again.close()


def test_versions_are_content_derived_across_replicas() -> None:
    """Two caches (two replicas, or a restart) give identical versions."""
    one, two = SnapshotCache(), SnapshotCache()
    s1 = one.build_snapshot(mesh(), "x")
    s2 = two.build_snapshot(mesh(), "y")
    for type_url in s1.resources:
        assert s1.type_version(type_url) == s2.type_version(type_url)
        assert s1.versions(type_url) == s2.versions(type_url)
