"""ADS fuzz harness: random and hostile DiscoveryRequest / DeltaDiscoveryRequest
sequences against the real grpc.aio server over a real channel.

Each example opens one stream (SotW or delta), writes a generated sequence
of requests (known, invented, malformed and overlong type URLs; wildcards,
odd and duplicate names; real, stale and garbage nonces; NACKs with large
messages; missing, empty and oversized nodes; initial_resource_versions),
half-closes, and reads until the server ends the stream. It asserts:

- the stream ends with OK or a refusal the server documents
  (INVALID_ARGUMENT, RESOURCE_EXHAUSTED), never INTERNAL or UNKNOWN;
- every response is well-formed: the type URL of a request on this stream,
  a fresh nonce, resources of that type (SotW);
- nothing of the stream outlives it: no stream, client, snapshot watch or
  shared name set is left, and the connected-streams gauge is back;
- the server still serves a well-behaved client afterwards.

Bounded and seeded (derandomized) in `make test`; `make fuzz-ads` runs the
same properties longer (NODEMESH_FUZZ_ADS_EXAMPLES).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from nodemesh.xds.cache import SnapshotCache
from nodemesh.xds.cache.names import live_name_sets
from nodemesh.xds.server import AdsServer, ServerSettings, StreamSettings
from nodemesh.xds.vocab import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, TYPE_PREFIX
from tests.xds.server.ads_harness import mesh

EXAMPLES = int(os.environ.get("NODEMESH_FUZZ_ADS_EXAMPLES", "40"))
ALLOWED_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,  # the client cancels a stream it gave up reading
}
# Small bounds, so examples reach them.
STREAM = StreamSettings(
    coalesce_delay=0.0,
    send_timeout=5.0,
    max_names=200,
    max_other_types=3,
    max_type_url_length=200,
    max_node_id_length=64,
    max_node_bytes=2048,
)
KNOWN = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET]

# -- strategies -----------------------------------------------------------------

type_urls = st.one_of(
    st.sampled_from(KNOWN),
    st.builds(lambda s: TYPE_PREFIX + "fuzz." + s, st.text(min_size=1, max_size=12)),
    st.text(max_size=20),  # malformed: no type.googleapis.com/
    st.just(TYPE_PREFIX + "x" * 300),  # over max_type_url_length
    st.just(TYPE_PREFIX),
)
names = st.lists(
    st.one_of(
        st.sampled_from(["*", "", "a", "b", "routes", "http", "missing"]),
        st.text(max_size=30),
    ),
    max_size=8,
)
nodes = st.one_of(
    st.none(),  # no node on the first request: INVALID_ARGUMENT
    st.builds(
        lambda i, c: base_pb2.Node(id=i, cluster=c), st.text(max_size=80), st.text(max_size=8)
    ),
    st.just(base_pb2.Node(id="big", user_agent_name="u" * 4000)),  # over max_node_bytes
)
nonce_choice = st.sampled_from(["none", "last", "garbage"])
errors = st.one_of(st.none(), st.text(max_size=50), st.just("E" * 10_000))


@dataclass(frozen=True)
class Step:
    type_url: str
    names: list[str]
    unsubscribe: list[str]
    nonce: str  # "none", "last" or "garbage"
    version: str
    error: str | None
    initial: dict[str, str]
    read_first: bool  # wait briefly for a response before writing this one


steps = st.builds(
    Step,
    type_urls,
    names,
    names,
    nonce_choice,
    st.text(max_size=12),
    errors,
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
    st.booleans(),
)


@dataclass(frozen=True)
class Scenario:
    api: str
    node: base_pb2.Node | None
    steps: list[Step] = field(default_factory=list)


scenarios = st.builds(
    Scenario, st.sampled_from(["sotw", "delta"]), nodes, st.lists(steps, min_size=1, max_size=8)
)

# -- the server, once per test ------------------------------------------------------


@dataclass
class Target:
    runner: asyncio.Runner
    cache: SnapshotCache
    server: AdsServer
    channel: grpc.aio.Channel


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """One server for all examples (in one event loop, driven by a Runner:
    hypothesis calls the test synchronously)."""
    with asyncio.Runner() as runner:

        async def start() -> Target:
            cache = SnapshotCache()
            cache.set_default_snapshot(cache.build_snapshot(mesh(), "v1"))
            server = AdsServer(cache, ServerSettings(tcp_address="127.0.0.1:0", stream=STREAM))
            await server.start()
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.tcp_port}")
            return Target(runner, cache, server, channel)

        found = runner.run(start())
        yield found
        runner.run(found.channel.close())
        runner.run(found.server.stop(1.0))


def _gauge() -> float:
    total = 0.0
    for api in ("sotw", "delta"):
        value = REGISTRY.get_sample_value("nodemesh_xds_connected_streams", {"api": api})
        total += value or 0.0
    return total


# -- one example ------------------------------------------------------------------


def _request(scenario: Scenario, step: Step, first: bool, last: Any) -> Any:
    nonce = {"none": "", "garbage": "no-such-nonce"}.get(step.nonce, last.nonce if last else "")
    if scenario.api == "sotw":
        req: Any = discovery_pb2.DiscoveryRequest(
            type_url=step.type_url,
            resource_names=step.names,
            version_info=step.version,
            response_nonce=nonce,
        )
    else:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=step.type_url,
            resource_names_subscribe=step.names,
            resource_names_unsubscribe=step.unsubscribe,
            response_nonce=nonce,
            initial_resource_versions=step.initial,
        )
    if step.error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=step.error))
    if first and scenario.node is not None:
        req.node.CopyFrom(scenario.node)
    return req


def _check_response(resp: Any, asked: set[str], nonces: set[str]) -> None:
    assert resp.type_url in asked, f"response for {resp.type_url!r}, never asked on this stream"
    assert resp.nonce and resp.nonce not in nonces, f"nonce {resp.nonce!r} empty or reused"
    nonces.add(resp.nonce)
    if isinstance(resp, discovery_pb2.DiscoveryResponse):
        assert all(r.type_url == resp.type_url for r in resp.resources)
    else:
        assert all(r.resource.type_url == resp.type_url for r in resp.resources)
        assert all(r.name for r in resp.resources)


async def _read(call: Any, queue: asyncio.Queue[Any]) -> None:
    async for resp in call:
        queue.put_nowait(resp)


async def _play(t: Target, scenario: Scenario) -> grpc.StatusCode | None:
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(t.channel)
    call = (
        stub.StreamAggregatedResources()
        if scenario.api == "sotw"
        else stub.DeltaAggregatedResources()
    )
    queue: asyncio.Queue[Any] = asyncio.Queue()
    reader = asyncio.create_task(_read(call, queue))
    asked: set[str] = set()
    nonces: set[str] = set()
    last = None
    local_failure = False
    try:
        for i, step in enumerate(scenario.steps):
            if step.read_first:
                with_timeout = asyncio.wait_for(queue.get(), 0.05)
                try:
                    last = await with_timeout
                    _check_response(last, asked, nonces)
                except TimeoutError:
                    pass
            asked.add(step.type_url)
            try:
                await call.write(_request(scenario, step, i == 0, last))
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                # The server already ended the stream. The client's own
                # failed write then replaces the server's status with a
                # local INTERNAL, so the status says nothing about the server.
                local_failure = True
                break
        else:
            await call.done_writing()
        async with asyncio.timeout(20):
            await asyncio.gather(reader, return_exceptions=True)
    finally:
        reader.cancel()
        call.cancel()
    while not queue.empty():
        _check_response(queue.get_nowait(), asked, nonces)
    code: grpc.StatusCode = await call.code()
    return None if local_failure else code


def _leftovers(t: Target) -> list[str]:
    """Per-stream state still held by the server (empty when idle)."""
    name_sets = live_name_sets()
    if name_sets:
        # Shared name sets live in a weak registry; a closed stream's set can
        # wait in a reference cycle for the collector, which a loaded machine
        # runs late. Only what survives a collection is a leak.
        gc.collect()
        name_sets = live_name_sets()
    found = {
        "streams": len(t.server._streams),
        "clients": len(t.server.clients()),
        "snapshot watches": len(t.cache._watches),
        "shared name sets": name_sets,
    }
    return [f"{n} {what}" for what, n in found.items() if n]


async def _idle(t: Target) -> None:
    """Until nothing of any stream is left (streams end asynchronously)."""
    try:
        async with asyncio.timeout(20):
            while _leftovers(t):  # noqa: ASYNC110 - server internals signal nothing
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"per-stream state leaked: {', '.join(_leftovers(t))}") from None


async def _still_serves(t: Target) -> None:
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(t.channel)
    call = stub.StreamAggregatedResources()
    await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=base_pb2.Node(id="ok")))
    resp = await asyncio.wait_for(call.read(), 20)
    assert sorted(r.type_url for r in resp.resources) == [CLUSTER, CLUSTER]
    call.cancel()


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios)
def test_hostile_request_sequences(target: Target, scenario: Scenario) -> None:
    target.runner.run(_idle(target))  # the previous probe stream may still be closing
    gauge = _gauge()
    code = target.runner.run(_play(target, scenario))
    assert code is None or code in ALLOWED_CODES, f"stream ended with {code}"
    target.runner.run(_idle(target))
    assert _gauge() == gauge, "connected-streams gauge not back"
    target.runner.run(_still_serves(target))
