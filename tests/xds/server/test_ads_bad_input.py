"""Bad input gets a clean gRPC error and disturbs nothing else."""

from __future__ import annotations

import grpc

from nodemesh.xds.cache import CLUSTER, ENDPOINT
from tests.xds.server.ads_harness import Harness, MakeHarness, mesh, names_of


async def _healthy_stream_still_served(harness: Harness, api: str) -> None:
    client = await harness.client(api, "bystander")
    await (client.request(CLUSTER) if api == "sotw" else client.request(CLUSTER, subscribe=["*"]))
    assert names_of(await client.recv()) == ["a", "b"]
    await client.close()


async def test_malformed_type_url_is_invalid_argument(harness: Harness, api: str) -> None:
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(mesh(), "v"))
    client = await harness.client(api)
    await client.request("envoy.config.cluster.v3.Cluster")  # no type.googleapis.com/
    error = await client.closed()
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "type_url" in (error.details() or "")
    await _healthy_stream_still_served(harness, api)


async def test_missing_node_is_invalid_argument(harness: Harness, api: str) -> None:
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(mesh(), "v"))
    client = await harness.client(api)
    client._sent_node = True  # never send the node
    await client.request(CLUSTER)
    error = await client.closed()
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node.id" in (error.details() or "")
    await _healthy_stream_still_served(harness, api)


async def test_undecodable_request_is_a_clean_error(harness: Harness, api: str) -> None:
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(mesh(), "v"))
    method = "StreamAggregatedResources" if api == "sotw" else "DeltaAggregatedResources"
    raw = harness.channel.stream_stream(
        f"/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    call = raw()
    await call.write(b"\xff\xff\xff\xff not a protobuf")
    code = await call.code()
    assert code != grpc.StatusCode.OK
    await _healthy_stream_still_served(harness, api)


async def test_flood_of_names_is_resource_exhausted(make_harness: MakeHarness, api: str) -> None:
    harness = await make_harness(max_names=1000)
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(mesh(), "v"))
    client = await harness.client(api)
    flood = [f"name-{i}" for i in range(1001)]
    if api == "sotw":
        await client.request(ENDPOINT, flood)
    else:
        await client.request(ENDPOINT, subscribe=flood)
    error = await client.closed()
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1001" in (error.details() or "")
    await _healthy_stream_still_served(harness, api)


async def test_sotw_request_with_garbage_nonce_is_ignored(harness: Harness) -> None:
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(mesh(), "v"))
    client = await harness.sotw()
    await client.request(CLUSTER)
    first = await client.recv()
    await client.request(CLUSTER, version="bogus", nonce="no-such-nonce", error="x")
    await client.ack(first)
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(mesh(("a", "c")), "v2"))
    # "b" is held until "c" (what replaces it) is ACKed: make-before-break.
    added = await client.recv()
    assert names_of(added) == ["a", "b", "c"]
    await client.ack(added)
    assert names_of(await client.recv()) == ["a", "c"]
    state = harness.server.clients()[0].types[CLUSTER]
    assert state.last_nack_error is None  # the garbage NACK was not taken
    await client.close()


async def test_half_close_right_after_a_request_ends_cleanly(harness: Harness, api: str) -> None:
    """Found by the ADS fuzz harness: a client that half-closes while the
    server writes its answer. Cancelling that write made gRPC refuse the
    final status, and the client waited forever."""
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(mesh(), "v"))
    for _ in range(20):
        client = await harness.client(api)
        await (
            client.request(CLUSTER) if api == "sotw" else client.request(CLUSTER, subscribe=["*"])
        )
        await client.call.done_writing()
        assert await client.closed() is None  # OK, not a hang nor an error
    await _healthy_stream_still_served(harness, api)


async def test_refusal_while_answering_reaches_the_client(harness: Harness, api: str) -> None:
    """Found by the ADS fuzz harness: a bad request right behind a good one
    is refused while the answer to the good one is being written. Failing
    the TaskGroup cancelled that write, and the client never got the status."""
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(mesh(), "v"))
    for _ in range(20):
        client = await harness.client(api)
        await (
            client.request(CLUSTER) if api == "sotw" else client.request(CLUSTER, subscribe=["*"])
        )
        await client.request("not-a-type-url")
        error = await client.closed()
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    await _healthy_stream_still_served(harness, api)
