"""Nonces, ACK/NACK, stale nonces and NACK handling, over real streams."""

from __future__ import annotations

from envoy.config.endpoint.v3 import endpoint_pb2

from nodemesh.xds.cache import CLUSTER, ENDPOINT
from nodemesh.xds.server import ConfigStatus
from tests.support.protos import narrow
from tests.xds.server.ads_harness import Harness, cluster, mesh, names_of, publish, wait_until


def _cds_state(harness: Harness):  # type: ignore[no-untyped-def]
    clients = harness.server.clients()
    assert len(clients) == 1
    return clients[0].types[CLUSTER]


async def _subscribe_cds(client, api: str) -> None:  # type: ignore[no-untyped-def]
    await (client.request(CLUSTER) if api == "sotw" else client.request(CLUSTER, subscribe=["*"]))


async def test_ack_is_recorded_with_version_and_nonce(harness: Harness, api: str) -> None:
    publish(harness.cache, "node-1", mesh())
    client = await harness.client(api)
    await _subscribe_cds(client, api)
    resp = await client.recv()
    await wait_until(lambda: _cds_state(harness).pending, what="pending response")
    assert _cds_state(harness).last_sent_nonce == resp.nonce
    await client.ack(resp)
    await wait_until(lambda: not _cds_state(harness).pending, what="ACK recorded")
    state = _cds_state(harness)
    assert state.status is ConfigStatus.SYNCED
    assert state.last_ack_time is not None
    if api == "sotw":
        assert state.last_acked_version == resp.version_info
    assert harness.metric("nodemesh_xds_push_to_ack_seconds_count", type="CDS") == 1
    await client.close()


async def test_sotw_stale_nonce_request_is_ignored(harness: Harness) -> None:
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    client = await harness.sotw()
    await client.request(ENDPOINT, ["a"])
    first = await client.recv()
    await client.ack(first, ["a"])
    publish(harness.cache, "node-1", mesh(clusters=("a", "b"), port=10001), "v2")
    # a new EDS response only if endpoints changed: change a's endpoints
    resources = mesh(clusters=("a", "b"))
    narrow(resources[ENDPOINT]["a"], endpoint_pb2.ClusterLoadAssignment).endpoints[0].lb_endpoints[
        0
    ].endpoint.address.socket_address.port_value = 7
    publish(harness.cache, "node-1", resources, "v3")
    second = await client.recv()
    assert second.nonce != first.nonce
    # A request carrying the superseded nonce (asking for b) must be ignored...
    await client.request(ENDPOINT, ["a", "b"], first.version_info, first.nonce)
    # ...so b is only sent once the current nonce asks for it.
    await client.ack(second, ["a", "b"])
    third = await client.recv()
    assert names_of(third) == ["a", "b"]
    assert third.nonce != second.nonce
    types = harness.server.clients()[0].types[ENDPOINT]
    assert types.subscribed == ("a", "b")
    await client.close()


async def test_nack_is_recorded_and_not_resent(harness: Harness, api: str) -> None:
    good = mesh(clusters=("a", "b"))
    publish(harness.cache, "node-1", good)
    client = await harness.client(api)
    await _subscribe_cds(client, api)
    first = await client.recv()
    await client.ack(first)
    # a "bad" version of cluster a
    bad = mesh(clusters=("a", "b"))
    bad[CLUSTER]["a"] = cluster("a", timeout_s=99)
    publish(harness.cache, "node-1", bad, "bad")
    pushed = await client.recv()
    assert "a" in names_of(pushed)
    if api == "sotw":
        await client.nack(pushed, first.version_info, "cluster a: rejected by test")
    else:
        await client.nack(pushed, "cluster a: rejected by test")
    await wait_until(lambda: _cds_state(harness).last_nack_error is not None, what="NACK")
    state = _cds_state(harness)
    assert state.last_nack_error == "cluster a: rejected by test"
    statuses = {r.name: r.status for r in state.resources}
    assert statuses["a"] is ConfigStatus.ERROR
    assert statuses["b"] is ConfigStatus.SYNCED
    assert harness.metric("nodemesh_xds_nacks_total", type="CDS") == 1
    # Other resources keep flowing; the bad version is not pushed again on
    # its own: the next response is caused by b's change only.
    after = mesh(clusters=("a", "b"))
    after[CLUSTER]["a"] = cluster("a", timeout_s=99)
    after[CLUSTER]["b"] = cluster("b", timeout_s=5)
    publish(harness.cache, "node-1", after, "b-changed")
    nxt = await client.recv()
    if api == "delta":
        assert names_of(nxt) == ["b"]
    else:
        assert names_of(nxt) == ["a", "b"]  # SotW CDS is full state by definition
        assert nxt.version_info != pushed.version_info
    await client.close()


async def test_nack_then_fix_clears_error(harness: Harness, api: str) -> None:
    publish(harness.cache, "node-1", mesh(clusters=("a",)))
    client = await harness.client(api)
    await _subscribe_cds(client, api)
    first = await client.recv()
    await client.ack(first)
    bad = mesh(clusters=("a",))
    bad[CLUSTER]["a"] = cluster("a", timeout_s=99)
    publish(harness.cache, "node-1", bad, "bad")
    pushed = await client.recv()
    if api == "sotw":
        await client.nack(pushed, first.version_info, "nope")
    else:
        await client.nack(pushed, "nope")
    await wait_until(lambda: _cds_state(harness).status is ConfigStatus.ERROR, what="ERROR")
    publish(harness.cache, "node-1", mesh(clusters=("a",)), "fixed")
    fixed = await client.recv()
    await client.ack(fixed)
    await wait_until(lambda: _cds_state(harness).status is ConfigStatus.SYNCED, what="SYNCED")
    await client.close()
