"""The snapshot cache alone: encode-once, change tracking, consistency, grouping."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2

from nodemesh.xds.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, SnapshotCache, SnapshotError
from tests.xds.server.ads_harness import cluster, endpoints, mesh


def _cache(**kwargs: object) -> SnapshotCache:
    return SnapshotCache(**kwargs)  # type: ignore[arg-type]


def test_unchanged_resources_share_their_encoding() -> None:
    cache = _cache()
    first = cache.build_snapshot(mesh(clusters=("a", "b")), "v1", "n")
    cache.set_snapshot("n", first)
    resources = mesh(clusters=("a", "b"))  # equal content, new objects
    resources[ENDPOINT]["b"] = endpoints("b", 9)
    second = cache.build_snapshot(resources, "v2", "n")
    assert second.get(CLUSTER)["a"] is first.get(CLUSTER)["a"]
    assert second.get(ENDPOINT)["a"] is first.get(ENDPOINT)["a"]
    assert second.get(ENDPOINT)["b"] is not first.get(ENDPOINT)["b"]
    cache.set_snapshot("n", second)
    changes = second.changes_since(first.serial)
    assert changes == {ENDPOINT: frozenset({"b"})}


def test_changes_chain_across_a_burst() -> None:
    cache = _cache()
    snaps = [cache.build_snapshot(mesh(clusters=("a",)), "v0", "n")]
    cache.set_snapshot("n", snaps[0])
    for i, name in enumerate(("x", "y", "z"), start=1):
        resources = mesh(clusters=("a",))
        resources[ENDPOINT][name] = endpoints(name, i)
        snaps.append(cache.build_snapshot(resources, f"v{i}", "n"))
        cache.set_snapshot("n", snaps[-1])
    # z's snapshot no longer has x or y: both count as changed since v0
    assert snaps[-1].changes_since(snaps[0].serial) == {ENDPOINT: frozenset({"x", "y", "z"})}
    assert snaps[-1].changes_since(-5) is None  # unknown ancestor: full diff


def test_wire_bytes_decode_to_the_message() -> None:
    snapshot = _cache().build_snapshot(mesh(), "v")
    resource = snapshot.get(CLUSTER)["a"]
    assert resource.to_any().type_url == CLUSTER
    decoded = type(resource.message)()
    resource.to_any().Unpack(decoded)
    assert decoded == resource.message


def test_consistency_is_reported_not_raised() -> None:
    cache = _cache()
    resources = mesh(clusters=("a",))
    del resources[ROUTE]["routes"]
    resources[CLUSTER]["orphan"] = cluster("orphan")
    issues = cache.set_snapshot("n", cache.build_snapshot(resources, "v"))
    assert any("listener 'http'" in i and "'routes'" in i for i in issues)
    assert any("cluster 'orphan'" in i for i in issues)
    assert cache.snapshot("n") is not None
    assert cache.set_snapshot("ok", cache.build_snapshot(mesh(), "v")) == ()


def test_bad_input_names_type_and_resource() -> None:
    cache = _cache()
    with pytest.raises(SnapshotError, match="invalid type URL 'clusters'"):
        cache.build_snapshot({"clusters": {}}, "v")
    with pytest.raises(SnapshotError, match=r"'x' of .*Listener is not a protobuf message"):
        cache.build_snapshot({LISTENER: {"x": "not a message"}}, "v")  # type: ignore[dict-item]


def test_node_hash_groups_nodes_and_default_applies() -> None:
    cache = _cache(node_hash=lambda node: node.cluster)
    one = base_pb2.Node(id="envoy-1", cluster="edge")
    two = base_pb2.Node(id="envoy-2", cluster="edge")
    assert cache.node_key(one) == cache.node_key(two) == "edge"
    default = cache.build_snapshot(mesh(), "default")
    cache.set_default_snapshot(default)
    assert cache.snapshot("edge") is default
    edge = cache.build_snapshot(mesh(clusters=("e",)), "edge")
    woke: list[str] = []
    cancel = cache.watch("edge", lambda: woke.append("edge"))
    cache.set_snapshot("edge", edge)
    assert cache.snapshot("edge") is edge
    assert woke == ["edge"]
    cancel()
    cache.clear_snapshot("edge")
    assert cache.snapshot("edge") is default
    assert woke == ["edge"]


def test_consistency_follows_incremental_changes() -> None:
    """Findings are reused only where their inputs did not change."""
    cache = _cache()
    good = mesh(clusters=("a", "b"))
    assert cache.set_snapshot("n", cache.build_snapshot(good, "v1", "n")) == ()
    # same listener/cluster objects; the route the listener names disappears
    no_route = {**good, ROUTE: {}}
    issues = cache.set_snapshot("n", cache.build_snapshot(no_route, "v2", "n"))
    assert issues == ("listener 'http' names missing route config 'routes'",)
    # only an endpoint's content changes: the listener finding stays
    moved = {**no_route, ENDPOINT: {**good[ENDPOINT], "a": endpoints("a", 1)}}
    issues = cache.set_snapshot("n", cache.build_snapshot(moved, "v3", "n"))
    assert issues == ("listener 'http' names missing route config 'routes'",)
    # an endpoint name disappears: clusters are re-checked
    gone = {**moved, ENDPOINT: {"a": moved[ENDPOINT]["a"]}}
    issues = cache.set_snapshot("n", cache.build_snapshot(gone, "v4", "n"))
    assert "cluster 'b' names missing endpoints 'b'" in issues
    # and the route comes back
    back = {**gone, ROUTE: good[ROUTE]}
    issues = cache.set_snapshot("n", cache.build_snapshot(back, "v5", "n"))
    assert issues == ("cluster 'b' names missing endpoints 'b'",)


def test_unchanged_types_are_shared_whole() -> None:
    cache = _cache()
    resources = mesh(clusters=("a", "b"))
    first = cache.build_snapshot(resources, "v1", "n")
    cache.set_snapshot("n", first)
    changed = {**resources, ENDPOINT: {**resources[ENDPOINT], "b": endpoints("b", 5)}}
    second = cache.build_snapshot(changed, "v2", "n")
    cache.set_snapshot("n", second)
    assert second.resources[CLUSTER] == first.resources[CLUSTER]
    assert second.get(LISTENER)["http"] is first.get(LISTENER)["http"]
    assert second.changes_since(first.serial) == {ENDPOINT: frozenset({"b"})}
    # a reordered or renamed type is not taken as unchanged
    renamed = {**changed, CLUSTER: {"z": resources[CLUSTER]["a"], "b": resources[CLUSTER]["b"]}}
    third = cache.build_snapshot(renamed, "v3", "n")
    assert set(third.get(CLUSTER)) == {"z", "b"}
    assert third.get(CLUSTER)["z"].name == "z"
