"""Proxyless gRPC clients nobody here wrote, served by the real control plane:
grpcio's xDS resolver (Python) and grpc-go's (built from the Go module proxy,
integration/proxyless/grpcgo). Each resolves `xds:///` targets against
nodemesh's ADS on loopback and calls real gRPC backends: a plain Service, a
CiliumEnvoyConfig 90/10 split within binomial tolerance, a live weight change
on the same channel without a failed call, and unknown targets failing fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import structlog

from integration.proxyless_rig import (
    PLAIN,
    SPLIT,
    UNKNOWN,
    ClientProcess,
    Rig,
    grpcgo_client,
    grpcio_client,
    proxyless_mesh,
)
from nodemesh.cmd.demo.traffic import judge_split

MakeClient = Callable[[str, Path], ClientProcess]
CLIENTS: dict[str, MakeClient] = {"grpcio": grpcio_client, "grpc-go": grpcgo_client}


@pytest.fixture(params=sorted(CLIENTS))
def make_client(request: pytest.FixtureRequest) -> MakeClient:
    return CLIENTS[str(request.param)]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with proxyless_mesh(tmp_path) as rig:
        yield rig


async def started(make: MakeClient, rig: Rig, target: str, node_id: str) -> ClientProcess:
    return await make(target, rig.bootstrap(node_id)).start()


async def test_plain_service(rig: Rig, make_client: MakeClient) -> None:
    client = await started(make_client, rig, PLAIN, "plain-client")
    try:
        batch = await client.batch(50)
    finally:
        await client.stop()
    assert batch.errors == {} and batch.counts == {"solo": 50}


async def test_split_is_90_10_and_follows_a_live_weight_change(
    rig: Rig, make_client: MakeClient
) -> None:
    client = await started(make_client, rig, SPLIT, "split-client")
    try:
        first = await client.batch(600)
        await rig.plane.wait_synced("split-client")
        await rig.set_weights((20, 80))
        # The client holds the new version once it has ACKed it.
        await rig.plane.wait_synced("split-client")
        second = await client.batch(600)
    finally:
        await client.stop()
    assert first.errors == {} and second.errors == {}, (first.errors, second.errors)
    before = judge_split({"v1": 90, "v2": 10}, first.counts)
    assert all(v.within for v in before), before
    after = judge_split({"v1": 20, "v2": 80}, second.counts)
    assert all(v.within for v in after), after


@pytest.mark.parametrize(
    "target",
    [
        UNKNOWN,
        "greeter.default.svc.cluster.local",  # no port
        "greeter.nowhere.svc.cluster.local:50051",  # no such namespace
        "greeter.default.svc.cluster.local:9",  # no such port
    ],
)
async def test_a_target_that_does_not_exist_fails_at_once(
    rig: Rig, make_client: MakeClient, target: str
) -> None:
    """The client fails the call with UNAVAILABLE well inside its deadline
    instead of waiting out gRPC's 15 s does-not-exist timer (the 5 s deadline
    is what tells them apart: DEADLINE_EXCEEDED otherwise). gRPC ignores a
    full-state LDS response without a name it never received, so nodemesh
    answers with a Listener that has no virtual host (xds/server/absent.py).
    Nothing is logged at error level for a name in the wrong form."""
    with structlog.testing.capture_logs() as logs:
        client = await started(make_client, rig, target, "lost-client")
        try:
            batch = await client.batch(1)
        finally:
            await client.stop()
    [(error, count)] = batch.errors.items()
    # grpcio prints codes as UNAVAILABLE, grpc-go as Unavailable.
    assert count == 1 and error.upper().startswith("UNAVAILABLE"), (error, batch.seconds)
    assert "could not find VirtualHost" in error and target in error, error
    assert [e for e in logs if e.get("log_level") in ("error", "critical")] == []
