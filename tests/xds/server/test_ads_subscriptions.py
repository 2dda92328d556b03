"""Wildcard and named subscriptions, in SotW and delta, over real streams."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from nodemesh.xds.cache import CLUSTER, ENDPOINT, LISTENER
from tests.support.protos import narrow
from tests.xds.server.ads_harness import Harness, endpoints, mesh, names_of, publish, wait_until


@pytest.mark.parametrize("wildcard", [[], ["*"]], ids=["legacy-empty", "star"])
async def test_wildcard_cds_gets_every_cluster(
    harness: Harness, api: str, wildcard: list[str]
) -> None:
    publish(harness.cache, "node-1", mesh(clusters=("a", "b", "c")))
    client = await harness.client(api)
    if api == "sotw":
        await client.request(CLUSTER, wildcard)
    else:
        await client.request(CLUSTER, subscribe=wildcard)
    resp = await client.recv()
    assert resp.type_url == CLUSTER
    assert names_of(resp) == ["a", "b", "c"]
    assert resp.nonce
    await client.close()


async def test_wildcard_lds_legacy_empty_stays_wildcard_on_ack(harness: Harness) -> None:
    """SotW: ACKs of a legacy wildcard also carry an empty list; the
    subscription stays a wildcard and new listeners arrive."""
    publish(harness.cache, "node-1", mesh())
    client = await harness.sotw()
    await client.request(LISTENER)
    first = await client.recv()
    await client.ack(first)
    resources = mesh()
    extra = narrow(mesh(port=10001)[LISTENER]["http"], listener_pb2.Listener)
    extra.name = "http2"
    resources[LISTENER]["http2"] = extra
    publish(harness.cache, "node-1", resources, "v2")
    second = await client.recv()
    assert names_of(second) == ["http", "http2"]
    await client.close()


async def test_named_subscription_waits_for_missing_name(harness: Harness, api: str) -> None:
    """EDS names requested before they exist are sent once they appear."""
    publish(harness.cache, "node-1", mesh(clusters=("a",)))
    client = await harness.client(api)
    if api == "sotw":
        await client.request(ENDPOINT, ["a", "later"])
    else:
        await client.request(ENDPOINT, subscribe=["a", "later"])
    first = await client.recv()
    assert names_of(first) == ["a"]
    await client.ack(first, ["a", "later"]) if api == "sotw" else await client.ack(first)
    resources = mesh(clusters=("a",))
    resources[ENDPOINT]["later"] = endpoints("later", 9999)
    publish(harness.cache, "node-1", resources, "v2")
    second = await client.recv()
    assert "later" in names_of(second)
    if api == "delta":
        assert names_of(second) == ["later"]  # only what changed
    await client.close()


async def test_resubscribed_name_is_sent_again(harness: Harness, api: str) -> None:
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    client = await harness.client(api)
    if api == "sotw":
        await client.request(ENDPOINT, ["a", "b"])
        r1 = await client.recv()
        assert names_of(r1) == ["a", "b"]
        await client.ack(r1, ["a"])  # drop b
        r2 = await client.recv()
        assert names_of(r2) == ["a"]
        await client.ack(r2, ["a", "b"])  # and ask for it again
        r3 = await client.recv()
        assert names_of(r3) == ["a", "b"]
    else:
        await client.request(ENDPOINT, subscribe=["a", "b"])
        r1 = await client.recv()
        assert names_of(r1) == ["a", "b"]
        await client.ack(r1)
        await client.request(ENDPOINT, unsubscribe=["b"])
        await client.request(ENDPOINT, subscribe=["b"])
        r2 = await client.recv()
        assert names_of(r2) == ["b"]
    await client.close()


async def test_unknown_well_formed_type_is_served_empty(harness: Harness, api: str) -> None:
    """A type the server holds nothing for (SDS here) does not end the
    stream; other types keep flowing on it."""
    publish(harness.cache, "node-1", mesh())
    client = await harness.client(api)
    secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    if api == "sotw":
        await client.request(secret, ["cert"])
        await client.request(CLUSTER)
    else:
        await client.request(secret, subscribe=["cert"])
        await client.request(CLUSTER)
        absent = await client.recv()  # delta says the secret does not exist
        assert absent.type_url == secret and list(absent.removed_resources) == ["cert"]
    resp = await client.recv()
    assert resp.type_url == CLUSTER
    await wait_until(
        lambda: any(secret in c.types for c in harness.server.clients()), what="SDS state"
    )
    await client.close()


async def test_delta_unsubscribing_star_ends_the_wildcard(harness: Harness) -> None:
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    client = await harness.delta()
    await client.request(CLUSTER, subscribe=["*"])
    first = await client.recv()
    assert names_of(first) == ["a", "b"]
    await client.ack(first)
    await client.request(CLUSTER, subscribe=["a"], unsubscribe=["*"])
    # The change below is pushed at once (leading edge): the request must
    # have landed first, or the push rightly goes to the old subscription.
    await wait_until(
        lambda: (
            harness.server.clients()[0].types[CLUSTER].subscribed == ("a",)
            and not harness.server.clients()[0].types[CLUSTER].wildcard
        ),
        what="wildcard ended",
    )
    # a new cluster no longer arrives; a change to the named one does
    resources = mesh(clusters=("a", "b", "c"))
    narrow(resources[CLUSTER]["a"], cluster_pb2.Cluster).connect_timeout.seconds = 7
    publish(harness.cache, "node-1", resources, "v2")
    second = await client.recv()
    assert names_of(second) == ["a"]
    await client.close()


async def test_sotw_switch_from_wildcard_to_names(harness: Harness) -> None:
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    client = await harness.sotw()
    await client.request(CLUSTER, ["*"])
    first = await client.recv()
    assert names_of(first) == ["a", "b"]
    await client.ack(first, ["b"])  # from now on only b
    second = await client.recv()
    assert names_of(second) == ["b"]
    await client.close()


async def test_delta_says_once_that_a_requested_name_does_not_exist(harness: Harness) -> None:
    """Delta answers a subscription to a name the server does not have with
    that name in removed_resources (once), so the client need not wait out
    its initial_fetch_timeout; the resource is sent when it appears."""
    publish(harness.cache, "node-1", mesh(clusters=("a",)))
    client = await harness.delta()
    await client.request(ENDPOINT, subscribe=["a", "missing"])
    first = await client.recv()
    assert names_of(first) == ["a"]
    assert list(first.removed_resources) == ["missing"]
    await client.ack(first)
    # An unrelated change does not repeat the answer.
    resources = mesh(clusters=("a",))
    resources[ENDPOINT]["a"] = endpoints("a", 8081)
    publish(harness.cache, "node-1", resources, "v2")
    second = await client.recv()
    assert names_of(second) == ["a"] and list(second.removed_resources) == []
    await client.ack(second)
    resources[ENDPOINT]["missing"] = endpoints("missing", 9999)
    publish(harness.cache, "node-1", resources, "v3")
    third = await client.recv()
    assert names_of(third) == ["missing"] and list(third.removed_resources) == []
    await client.close()


async def test_wildcard_type_with_nothing_in_it_is_answered_empty(
    harness: Harness, api: str
) -> None:
    """A fresh client subscribed to a type the snapshot has none of (a mesh
    with no Clusters) gets an empty answer at once. Without one, a delta
    Envoy waits out its 15 s initial_fetch_timeout before it serves."""
    resources = mesh()
    resources[CLUSTER] = {}
    resources[ENDPOINT] = {}
    publish(harness.cache, "node-1", resources)
    client = await harness.client(api)
    if api == "sotw":
        await client.request(CLUSTER, ["*"])
    else:
        await client.request(CLUSTER, subscribe=["*"])
    resp = await client.recv()
    assert resp.type_url == CLUSTER and not resp.resources and resp.nonce
    await client.close()
