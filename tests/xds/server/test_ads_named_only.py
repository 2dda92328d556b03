"""Resources served by name only (proxyless gRPC targets), and the immediate
"does not exist" answer a proxyless client needs, in SotW and delta."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import Message

from nodemesh.xds.cache import CLUSTER, LISTENER
from tests.support.protos import narrow
from tests.xds.server.ads_harness import Harness, MakeHarness, cluster, mesh, names_of

TARGET = "greeter.default.svc.cluster.local:50051"


def with_target() -> dict[str, dict[str, Message]]:
    resources = mesh(clusters=("a", "b"))
    target = narrow(mesh(clusters=("a",))[LISTENER]["http"], listener_pb2.Listener)
    target.name = TARGET
    resources[LISTENER][TARGET] = target
    resources[CLUSTER]["proxyless-only"] = cluster("proxyless-only", eds=False)
    return resources


def publish_named_only(harness: Harness, resources: Mapping[str, Mapping[str, Message]]) -> None:
    hidden = {LISTENER: {TARGET}, CLUSTER: {"proxyless-only"}}
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(resources, "v1", None, hidden))


@pytest.mark.parametrize("type_url", [LISTENER, CLUSTER])
async def test_wildcard_leaves_out_what_is_served_by_name_only(
    harness: Harness, api: str, type_url: str
) -> None:
    publish_named_only(harness, with_target())
    client = await harness.client(api)
    if api == "sotw":
        await client.request(type_url, ["*"])
    else:
        await client.request(type_url, subscribe=["*"])
    resp = await client.recv()
    assert names_of(resp) == (["http"] if type_url == LISTENER else ["a", "b"])
    await client.close()


async def test_a_name_only_listener_is_served_to_whoever_names_it(
    harness: Harness, api: str
) -> None:
    publish_named_only(harness, with_target())
    client = await harness.client(api)
    if api == "sotw":
        await client.request(LISTENER, [TARGET])
    else:
        await client.request(LISTENER, subscribe=[TARGET])
    assert names_of(await client.recv()) == [TARGET]
    await client.close()


async def test_wildcard_plus_a_name_only_name_gets_both(harness: Harness) -> None:
    publish_named_only(harness, with_target())
    client = await harness.sotw()
    await client.request(LISTENER, ["*", TARGET])
    assert names_of(await client.recv()) == sorted(["http", TARGET])
    await client.close()


@pytest.mark.parametrize("type_url", [LISTENER, CLUSTER])
async def test_sotw_full_state_answers_a_missing_name_at_once(
    make_harness: MakeHarness, type_url: str
) -> None:
    """LDS/CDS responses are full state: one without the name is the
    protocol's "does not exist" (here without the gRPC stand-in)."""
    harness = await make_harness(absent_listeners=False)
    publish_named_only(harness, with_target())
    client = await harness.sotw()
    await client.request(type_url, ["nope.default.svc.cluster.local:80"])
    resp = await client.recv()
    assert resp.type_url == type_url and names_of(resp) == []
    await client.close()


async def test_sotw_missing_listener_gets_a_stand_in_without_virtual_hosts(
    harness: Harness,
) -> None:
    """gRPC ignores absence for a name it never received; the stand-in makes
    its calls fail at once (integration/test_proxyless_grpc.py)."""
    publish_named_only(harness, with_target())
    client = await harness.sotw()
    await client.request(LISTENER, [TARGET, "nope:80"])
    resp = await client.recv()
    assert names_of(resp) == sorted([TARGET, "nope:80"])
    stand_in = next(lst for lst in map(_listener, resp.resources) if lst.name == "nope:80")
    manager = hcm_pb2.HttpConnectionManager()
    stand_in.api_listener.api_listener.Unpack(manager)
    assert not manager.route_config.virtual_hosts and "nope:80" in manager.route_config.name
    await client.close()


def _listener(packed: Any) -> listener_pb2.Listener:
    listener = listener_pb2.Listener()
    packed.Unpack(listener)
    return listener


async def test_sotw_adding_a_missing_name_is_answered_even_if_nothing_changed(
    harness: Harness,
) -> None:
    publish_named_only(harness, with_target())
    client = await harness.sotw()
    await client.request(LISTENER, [TARGET])
    first = await client.recv()
    await client.ack(first, [TARGET])
    await client.request(CLUSTER, ["a"])
    first_cds = await client.recv()
    await client.ack(first_cds, ["a"])
    await client.request(
        CLUSTER, ["a", "nope"], version=first_cds.version_info, nonce=first_cds.nonce
    )
    second = await client.recv()
    assert names_of(second) == ["a"] and second.nonce != first_cds.nonce
    await client.close()


async def test_delta_says_a_missing_name_does_not_exist(harness: Harness) -> None:
    publish_named_only(harness, with_target())
    client = await harness.delta()
    await client.request(LISTENER, subscribe=["greeter.default.svc.cluster.local"])
    resp = await client.recv()
    assert list(resp.removed_resources) == ["greeter.default.svc.cluster.local"]
    await client.close()


async def test_delta_wildcard_loses_a_listener_that_becomes_name_only(harness: Harness) -> None:
    resources = with_target()
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(resources, "v1"))
    client = await harness.delta()
    await client.request(LISTENER, subscribe=["*"])
    first = await client.recv()
    assert names_of(first) == sorted(["http", TARGET])
    await client.ack(first)
    publish_named_only(harness, resources)
    second = await client.recv()
    assert list(second.removed_resources) == [TARGET] and not second.resources
    await client.close()


async def test_sotw_status_of_a_held_cluster_that_became_name_only_is_stale(
    harness: Harness,
) -> None:
    """Envoy still holds a cluster the server now serves by name only (its
    removal held back, make-before-break): status must not call it SYNCED
    just because the snapshot still has it for proxyless clients."""
    resources = with_target()
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(resources, "v1"))
    client = await harness.sotw()
    await client.request(CLUSTER, [])
    first = await client.recv()
    assert names_of(first) == ["a", "b", "proxyless-only"]
    await client.ack(first)
    harness.cache.hold_removals()
    try:
        publish_named_only(harness, resources)
        want = {"a": "SYNCED", "b": "SYNCED", "proxyless-only": "STALE"}
        assert await _cluster_status(harness, want) == want
    finally:
        harness.cache.release_removals()
    await client.close()


async def _cluster_status(harness: Harness, want: dict[str, str]) -> dict[str, str]:
    """Each CDS resource's status: `want` once reached (the ACK is processed
    asynchronously), else the last seen."""
    found: dict[str, str] = {}
    for _ in range(500):
        [stream] = harness.server.clients()
        found = {r.name: r.status.name for r in stream.types[CLUSTER].resources}
        if found == want:
            return found
        await asyncio.sleep(0.01)
    return found
