"""The agent's flow server over real gRPC: ALS in (malformed messages counted
and skipped), GetFlows and ServerStatus out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from nodemesh._gen.nodemesh.v1 import flow_pb2, observer_pb2
from nodemesh.flows.collector import CollectorOptions, FlowCollector
from nodemesh.flows.service import WARNING_KEY, FlowServer, FlowServerSettings
from tests.support.flows import (
    V2,
    als_message,
    canary_model,
    get_flows,
    http_entry,
    stream_access_logs,
)
from tests.support.polling import wait_until_async

MODEL = canary_model()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[FlowServer]:
    collector = FlowCollector(CollectorOptions("node-a", ring_capacity=100), lambda: MODEL)
    flows = FlowServer(
        collector, FlowServerSettings(tmp_path / "als.sock", observer_address="127.0.0.1:0")
    )
    await flows.start()
    try:
        yield flows
    finally:
        await flows.stop()


async def send(server: FlowServer, *messages: bytes) -> None:
    socket = server.settings.als_socket
    async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:

        async def requests() -> AsyncIterator[bytes]:
            for message in messages:
                yield message

        await stream_access_logs(channel)(requests())


async def flows(server: FlowServer, request: observer_pb2.GetFlowsRequest) -> list[flow_pb2.Flow]:
    async with grpc.aio.insecure_channel(server.observer_target) as channel:
        return [r.flow async for r in get_flows(channel)(request)]


async def test_entries_become_enriched_l7_flows(server: FlowServer) -> None:
    await send(server, als_message(http_entry(), http_entry(V2, cluster="default/httpbin-v2")))
    got = await flows(server, observer_pb2.GetFlowsRequest())
    assert [f.destination_service.name for f in got] == ["httpbin-v1", "httpbin-v2"]
    assert [f.destination.pod_name for f in got] == ["httpbin-v1-a", "httpbin-v2-a"]
    assert {f.source.pod_name for f in got} == {"curl-1"}
    assert got[0].summary == "HTTP/1.1 200 3ms (GET /headers) -> default/httpbin-v1"


async def test_malformed_messages_are_counted_and_skipped(server: FlowServer) -> None:
    no_request = http_entry()
    no_request.ClearField("request")
    await send(server, b"\xff\xff\xff", als_message(no_request, http_entry()), als_message())
    collector = server.collector
    assert collector.malformed_access_logs == 2 and len(collector.ring) == 1
    await send(server, als_message(http_entry()))  # the server is still up
    assert len(collector.ring) == 2


async def test_filters_allow_deny_and_status_class(server: FlowServer) -> None:
    await send(
        server,
        als_message(
            http_entry(code=200),
            http_entry(V2, cluster="default/httpbin-v2", code=503),
            http_entry(code=404),
        ),
    )
    fifth = observer_pb2.FlowFilter(http_status_code=["5+"])
    assert [f.l7.http.code for f in await flows(server, _request(allow=[fifth]))] == [503]
    v1 = observer_pb2.FlowFilter(destination_service=["default/httpbin-v1"])
    assert [f.l7.http.code for f in await flows(server, _request(deny=[v1]))] == [503]
    pod = observer_pb2.FlowFilter(source_pod=["default/curl-1"])
    last = observer_pb2.GetFlowsRequest(number=2, whitelist=[pod])
    assert [f.l7.http.code for f in await flows(server, last)] == [503, 404]


def _request(
    allow: list[observer_pb2.FlowFilter] | None = None,
    deny: list[observer_pb2.FlowFilter] | None = None,
) -> observer_pb2.GetFlowsRequest:
    return observer_pb2.GetFlowsRequest(whitelist=allow or [], blacklist=deny or [])


async def test_invalid_filter_is_invalid_argument_naming_the_field(server: FlowServer) -> None:
    bad = observer_pb2.FlowFilter(destination_port=["http"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await flows(server, _request(allow=[bad]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "destination_port" in (caught.value.details() or "")


async def test_unknown_pod_returns_nothing_and_a_warning(server: FlowServer) -> None:
    await send(server, als_message(http_entry()))
    unknown = observer_pb2.FlowFilter(source_pod=["default/nope"])
    async with grpc.aio.insecure_channel(server.observer_target) as channel:
        call = get_flows(channel)(_request(allow=[unknown]))
        got = [r async for r in call]
        metadata = dict(await call.initial_metadata() or ())
    assert got == [] and "default/nope" in metadata[WARNING_KEY]


async def test_follow_streams_new_flows_and_a_client_that_leaves_leaks_nothing(
    server: FlowServer,
) -> None:
    await send(server, als_message(http_entry(path="/old")))
    ring = server.collector.ring
    async with grpc.aio.insecure_channel(server.observer_target) as channel:
        call = get_flows(channel)(observer_pb2.GetFlowsRequest(follow=True))
        first = await call.read()
        assert first.flow.l7.http.url == "/old"
        await wait_until_async(lambda: ring.followers == 1, what="the follower registered")
        await send(server, als_message(http_entry(path="/new")))
        second = await call.read()
        assert second.flow.l7.http.url == "/new"
        call.cancel()  # the client goes away mid-stream
    await wait_until_async(lambda: ring.followers == 0, what="the follower gone")
    tasks = [t for t in asyncio.all_tasks() if "GetFlows" in repr(t)]
    assert tasks == []


async def test_server_status_counts_held_seen_and_lost(server: FlowServer) -> None:
    await send(server, *(als_message(http_entry(path=f"/{n}")) for n in range(150)), b"\x01")
    async with grpc.aio.insecure_channel(server.observer_target) as channel:
        status = await channel.unary_unary(
            "/nodemesh.v1.Observer/ServerStatus",
            request_serializer=observer_pb2.ServerStatusRequest.SerializeToString,
            response_deserializer=observer_pb2.ServerStatusResponse.FromString,
        )(observer_pb2.ServerStatusRequest())
    assert (status.num_flows, status.max_flows, status.seen_flows) == (100, 100, 150)
    assert status.lost_malformed_access_logs == 1
