"""A client process for test_ads_burst: opens STREAMS delta ADS streams at
once over CHANNELS connections, sends each one's first request, prints
"sent" when every first request is on the wire, then waits for each stream's
first response and prints one line: "ok <n> failed <m> <code>:<count> ...".

Usage: python -m tests.xds.server.burst_client PORT STREAMS CHANNELS
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from nodemesh.xds.cache import CLUSTER

FIRST_RESPONSE_TIMEOUT = 120.0


async def _first_response(call: Any) -> str:
    """OK, or the status code the stream ended with instead."""
    try:
        async with asyncio.timeout(FIRST_RESPONSE_TIMEOUT):
            response: object = await call.read()
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)
    except TimeoutError:
        return "NO_RESPONSE"
    return "OK" if response is not grpc.aio.EOF else "EOF"


async def _open(stub: Any, node_id: str) -> Any:
    call = stub.DeltaAggregatedResources()
    request = discovery_pb2.DeltaDiscoveryRequest(
        node=base_pb2.Node(id=node_id, cluster="burst"), type_url=CLUSTER
    )
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await call.write(request)  # if the stream ended already, its read says how
    return call


async def main(port: int, streams: int, channels: int) -> None:
    # A subchannel pool per channel: separate HTTP/2 connections, like
    # separate Envoys, rather than one connection gRPC would share.
    conns = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(channels)
    ]
    for conn in conns:
        await conn.channel_ready()
    stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(c) for c in conns]
    calls = await asyncio.gather(
        *(_open(stubs[i % channels], f"burst-{i}") for i in range(streams))
    )
    print("sent", flush=True)
    outcomes = collections.Counter(await asyncio.gather(*(_first_response(c) for c in calls)))
    ok = outcomes.pop("OK", 0)
    detail = " ".join(f"{code}:{count}" for code, count in sorted(outcomes.items()))
    print(f"ok {ok} failed {sum(outcomes.values())} {detail}".rstrip(), flush=True)
    for call in calls:
        call.cancel()
    for conn in conns:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
