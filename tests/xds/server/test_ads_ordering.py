"""Make-before-break ordering, held cluster removals, and coalescing."""

from __future__ import annotations

import asyncio
from typing import Any

from envoy.service.discovery.v3 import ads_pb2_grpc

from nodemesh.xds.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.xds.server.ads_harness import (
    Harness,
    MakeHarness,
    SotwClient,
    cluster,
    decode_resources,
    mesh,
    names_of,
    publish,
    settle,
    wait_until,
)


async def _subscribe_all(client: Any, api: str, eds: list[str]) -> None:
    # Deliberately in the reverse of the push order.
    if api == "sotw":
        await client.request(ROUTE, ["routes"])
        await client.request(LISTENER)
        await client.request(ENDPOINT, eds)
        await client.request(CLUSTER)
    else:
        await client.request(ROUTE, subscribe=["routes"])
        await client.request(LISTENER, subscribe=["*"])
        await client.request(ENDPOINT, subscribe=eds)
        await client.request(CLUSTER, subscribe=["*"])


async def _ack(client: Any, api: str, resp: Any, eds: list[str]) -> None:
    if api == "sotw":
        names = eds if resp.type_url == ENDPOINT else ["routes"] if resp.type_url == ROUTE else []
        await client.ack(resp, names)
    else:
        await client.ack(resp)


async def test_push_order_is_cds_eds_lds_rds(harness: Harness, api: str) -> None:
    client = await harness.client(api)
    await _subscribe_all(client, api, ["a", "b"])
    # Subscriptions are in place before any snapshot exists.
    await wait_until(lambda: len(harness.server.clients()[0].types) == 4, what="4 subscriptions")
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    order = [(await client.recv()).type_url for _ in range(4)]
    assert order == [CLUSTER, ENDPOINT, LISTENER, ROUTE]
    await client.close()


async def test_cluster_removal_waits_for_route_ack(harness: Harness, api: str) -> None:
    """Routes move from a to b; a stays until the new routes are ACKed."""
    eds = ["a", "b"]
    publish(harness.cache, "node-1", mesh(clusters=("a",), weights={"a": 100}))
    client = await harness.client(api)
    await _subscribe_all(client, api, eds)
    # the first round may include a refresh of the new clusters' endpoints
    await settle(harness, client, types=4, eds=eds)
    publish(harness.cache, "node-1", mesh(clusters=("b",), weights={"b": 100}), "v2")
    cds = await client.recv()
    assert cds.type_url == CLUSTER
    if api == "sotw":
        assert names_of(cds) == ["a", "b"]  # a is held
    else:
        assert names_of(cds) == ["b"]
        assert list(cds.removed_resources) == []  # a's removal is held
    await _ack(client, api, cds, eds)
    eds_resp = await client.recv()
    assert eds_resp.type_url == ENDPOINT
    await _ack(client, api, eds_resp, eds)
    rds = await client.recv()
    assert rds.type_url == ROUTE
    assert decode_resources(rds)["routes"].virtual_hosts[0].routes[0].route.cluster == "b"
    await _ack(client, api, rds, eds)
    # only now is a removed
    final = await client.recv()
    assert final.type_url == CLUSTER
    if api == "sotw":
        assert names_of(final) == ["b"]
    else:
        assert list(final.removed_resources) == ["a"]
    await client.close()


async def test_burst_of_snapshots_is_one_push(make_harness: MakeHarness, api: str) -> None:
    harness = await make_harness(coalesce_delay=0.5)
    publish(harness.cache, "node-1", mesh(clusters=("a",)))
    client = await harness.client(api)
    await (client.request(CLUSTER) if api == "sotw" else client.request(CLUSTER, subscribe=["*"]))
    first = await client.recv()
    await client.ack(first)
    for timeout in range(2, 22):
        burst = mesh(clusters=("a",))
        burst[CLUSTER]["a"] = cluster("a", timeout_s=timeout)
        publish(harness.cache, "node-1", burst, f"burst-{timeout}")
    pushed = await client.recv()
    assert decode_resources(pushed)["a"].connect_timeout.seconds == 21  # latest wins
    await client.ack(pushed)
    # the next response is caused by the next change, not by the burst
    publish(harness.cache, "node-1", mesh(clusters=("a", "z")), "after")
    nxt = await client.recv()
    assert "z" in names_of(nxt)
    await wait_until(
        lambda: harness.metric("nodemesh_xds_pushes_total", type="CDS") >= 3, what="3 pushes"
    )
    assert harness.metric("nodemesh_xds_pushes_total", type="CDS") == 3
    await client.close()


async def test_slow_client_does_not_block_others(make_harness: MakeHarness) -> None:
    """A client that never reads is cut off after send_timeout; a healthy
    client on the same server keeps converging meanwhile."""
    harness = await make_harness(send_timeout=2.0)
    big = {f"c{i:04d}": cluster(f"c{i:04d}") for i in range(2000)}
    for c in big.values():
        c.alt_stat_name = "x" * 400  # ~0.5 KiB each: ~1 MiB per response
    publish(harness.cache, "stuck", {CLUSTER: big})
    publish(harness.cache, "healthy", mesh(clusters=("a",)))
    stuck = SotwClient(harness.channel, "stuck")
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(harness.channel)
    stuck.call = stub.StreamAggregatedResources()  # no reader: never reads
    await stuck.request(CLUSTER)
    healthy = await harness.sotw("healthy")
    await healthy.request(CLUSTER)
    await healthy.ack(await healthy.recv())
    for round_ in range(30):
        fresh = {}
        for name, c in big.items():
            fresh[name] = type(c)()
            fresh[name].CopyFrom(c)  # messages handed to the cache are never mutated
            fresh[name].connect_timeout.seconds = round_ + 2
        publish(harness.cache, "stuck", {CLUSTER: fresh}, f"r{round_}")
        changed = mesh(clusters=("a",))
        changed[CLUSTER]["a"] = cluster("a", timeout_s=round_ + 2)
        publish(harness.cache, "healthy", changed, f"r{round_}")
        resp = await healthy.recv()
        assert decode_resources(resp)["a"].connect_timeout.seconds == round_ + 2
        await healthy.ack(resp)
        if not any(c.node_id == "stuck" for c in harness.server.clients()):
            break
        await asyncio.sleep(0.2)
    await wait_until(
        lambda: all(c.node_id != "stuck" for c in harness.server.clients()),
        what="stuck stream closed",
    )
    # Should the client ever read again, the buffered responses end with
    # the server's verdict.
    stuck._start(stuck.call)
    error = await stuck.closed()
    assert error is not None
    assert error.code().name == "RESOURCE_EXHAUSTED"
    assert "did not read" in (error.details() or "")
    assert harness.metric("nodemesh_xds_connected_streams", api="sotw") == 1
    await healthy.close()


async def test_updated_cluster_gets_its_endpoints_again(harness: Harness, api: str) -> None:
    """Envoy keeps an updated cluster warming until it receives the
    cluster's endpoints again, changed or not: they are resent."""
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    client = await harness.client(api)
    if api == "sotw":
        await client.request(CLUSTER)
        await client.request(ENDPOINT, ["a", "b"])
    else:
        await client.request(CLUSTER, subscribe=["*"])
        await client.request(ENDPOINT, subscribe=["a", "b"])
    await settle(harness, client, types=2, eds=["a", "b"])
    changed = mesh(clusters=("a", "b"))
    changed[CLUSTER]["a"] = cluster("a", timeout_s=9)  # endpoints untouched
    publish(harness.cache, "node-1", changed, "v2")
    cds = await client.recv()
    assert cds.type_url == CLUSTER
    await client.ack(cds)
    eds = await client.recv()
    assert eds.type_url == ENDPOINT
    assert "a" in names_of(eds)
    if api == "delta":
        assert names_of(eds) == ["a"]  # only the updated cluster's endpoints
    await client.close()
