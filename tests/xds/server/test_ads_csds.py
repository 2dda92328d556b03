"""CSDS over real gRPC, the status API, metrics and structlog events."""

from __future__ import annotations

from typing import Any

import structlog
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from nodemesh.xds.cache import CLUSTER, ENDPOINT
from tests.xds.server.ads_harness import Harness, cluster, mesh, publish, wait_until


async def _nacked_client(harness: Harness, api: str) -> Any:
    publish(harness.cache, "node-1", mesh(clusters=("a", "b")))
    client = await harness.client(api)
    if api == "sotw":
        await client.request(CLUSTER)
        await client.request(ENDPOINT, ["a", "missing"])
    else:
        await client.request(CLUSTER, subscribe=["*"])
        await client.request(ENDPOINT, subscribe=["a", "missing"])
    for _ in range(2):
        resp = await client.recv()
        await (
            client.ack(resp, ["a", "missing"]) if resp.type_url == ENDPOINT else client.ack(resp)
        )
    bad = mesh(clusters=("a", "b"))
    bad[CLUSTER]["b"] = cluster("b", timeout_s=42)
    publish(harness.cache, "node-1", bad, "bad")
    pushed = await client.recv()
    if api == "sotw":
        await client.nack(pushed, "previous", "cluster b: invalid by test")
    else:
        await client.nack(pushed, "cluster b: invalid by test")
    await wait_until(
        lambda: harness.server.clients()[0].types[CLUSTER].last_nack_error is not None,
        what="NACK recorded",
    )
    return client


def _by_name(response: csds_pb2.ClientStatusResponse) -> dict[tuple[str, str], Any]:
    assert len(response.config) == 1
    return {(c.type_url, c.name): c for c in response.config[0].generic_xds_configs}


async def test_csds_fetch_reports_sync_error_and_not_sent(harness: Harness, api: str) -> None:
    client = await _nacked_client(harness, api)
    stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(harness.channel)
    response = await stub.FetchClientStatus(csds_pb2.ClientStatusRequest())
    assert response.config[0].node.id == "node-1"
    entries = _by_name(response)
    a, b = entries[(CLUSTER, "a")], entries[(CLUSTER, "b")]
    assert a.config_status == csds_pb2.SYNCED
    assert a.client_status == dump_pb2.ACKED
    assert a.last_updated.seconds > 0
    unpacked = cluster_pb2.Cluster()
    a.xds_config.Unpack(unpacked)
    assert unpacked.name == "a"
    assert b.config_status == csds_pb2.ERROR
    assert b.client_status == dump_pb2.NACKED
    assert b.error_state.details == "cluster b: invalid by test"
    missing = entries[(ENDPOINT, "missing")]
    assert missing.config_status == csds_pb2.NOT_SENT
    assert missing.client_status == dump_pb2.DOES_NOT_EXIST
    await client.close()


async def test_csds_stream_and_node_matcher(harness: Harness) -> None:
    client = await _nacked_client(harness, "delta")
    stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(harness.channel)
    call = stub.StreamClientStatus()
    request = csds_pb2.ClientStatusRequest(exclude_resource_contents=True)
    request.node_matchers.add().node_id.exact = "node-1"
    await call.write(request)
    response = await call.read()
    entries = _by_name(response)
    assert not entries[(CLUSTER, "a")].HasField("xds_config")
    other = csds_pb2.ClientStatusRequest()
    other.node_matchers.add().node_id.prefix = "nobody"
    await call.write(other)
    assert len((await call.read()).config) == 0
    await call.done_writing()
    await client.close()


async def test_status_api_views(harness: Harness, api: str) -> None:
    client = await _nacked_client(harness, api)
    [status] = harness.server.clients()
    assert (status.node_id, status.cluster, status.api) == ("node-1", "test", api)
    assert status.snapshot_label == "bad"
    cds = status.types[CLUSTER]
    assert cds.short_name == "CDS"
    assert cds.last_sent_nonce
    assert cds.last_nack_time is not None
    assert cds.resource_names == ("a", "b")
    dump = harness.server.config_dump("node-1", CLUSTER)
    assert dump[CLUSTER]["b"].connect_timeout.seconds == 42
    assert set(harness.server.config_dump("node-1")) == set(mesh())
    await client.close()


async def test_metrics_and_log_events(harness: Harness, api: str) -> None:
    with structlog.testing.capture_logs() as logs:
        client = await _nacked_client(harness, api)
        assert harness.metric("nodemesh_xds_connected_streams", api=api) == 1
        await client.close()
        await wait_until(
            lambda: harness.metric("nodemesh_xds_connected_streams", api=api) == 0,
            what="stream gone",
        )
    assert harness.metric("nodemesh_xds_pushes_total", type="CDS") == 2
    assert harness.metric("nodemesh_xds_pushes_total", type="EDS") == 1
    assert harness.metric("nodemesh_xds_nacks_total", type="CDS") == 1
    assert harness.metric("nodemesh_xds_bytes_sent_total", type="CDS") > 0
    assert harness.metric("nodemesh_xds_push_to_ack_seconds_count", type="EDS") == 1
    assert harness.metric("nodemesh_xds_snapshot_build_seconds_count") == 2
    events = {e["event"] for e in logs}
    assert {"xds_connect", "xds_push", "xds_ack", "xds_nack", "xds_disconnect"} <= events
    for event in logs:
        if event["event"] in {"xds_push", "xds_ack", "xds_nack"}:
            assert event["node_id"] == "node-1"
            assert event["stream_id"] >= 1
            assert event["type_url"].startswith("type.googleapis.com/")
