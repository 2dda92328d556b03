"""ADS fan-out benchmark: N concurrent ADS streams (delta and SotW) from
separate client processes against one nodemesh xDS server.

Measures, in one run, for each API:
- server RSS with N idle, synced streams (and KiB per stream);
- time from publishing a one-endpoint change to the moment the server has
  received the ACK from every stream (coalescing delay included);
- CPU-seconds the server process spent on that convergence.

Usage: .venv/bin/python -m bench.ads_fanout [--streams 1000] [--workers 8]
       [--services 100] [--rounds 5] [--coalesce 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import multiprocessing
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import grpc
import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import duration_pb2

from nodemesh.xds import metrics
from nodemesh.xds.cache import CLUSTER, ENDPOINT, SnapshotCache
from nodemesh.xds.server import AdsServer, ServerSettings, StreamSettings

# -- the mesh -------------------------------------------------------------------


def _cluster(name: str) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, connect_timeout=duration_pb2.Duration(seconds=1))
    c.type = cluster_pb2.Cluster.EDS
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    return c


def _cla(name: str, base: int) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = cla.endpoints.add()
    for i in range(10):
        ep = group.lb_endpoints.add()
        ep.endpoint.address.socket_address.address = f"10.{base // 250}.{base % 250}.{i + 1}"
        ep.endpoint.address.socket_address.port_value = 8080
    return cla


def mesh(services: int, bump: int = 0) -> dict[str, dict[str, Any]]:
    names = [f"svc-{i:05d}" for i in range(services)]
    endpoints = {n: _cla(n, i) for i, n in enumerate(names)}
    if bump:
        # the one-endpoint change: service 0's first endpoint moves
        ep = endpoints[names[0]].endpoints[0].lb_endpoints[0]
        ep.endpoint.address.socket_address.port_value = 8080 + bump
    return {CLUSTER: {n: _cluster(n) for n in names}, ENDPOINT: endpoints}


# -- client worker (separate process) ---------------------------------------------


async def _client_stream(stub: Any, api: str, node_id: str, eds_names: list[str]) -> None:
    node = base_pb2.Node(id=node_id, cluster="bench")
    queue: asyncio.Queue[Any] = asyncio.Queue()
    if api == "delta":
        call = stub.DeltaAggregatedResources()
        await call.write(
            discovery_pb2.DeltaDiscoveryRequest(
                node=node, type_url=CLUSTER, resource_names_subscribe=["*"]
            )
        )
        await call.write(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=ENDPOINT, resource_names_subscribe=eds_names
            )
        )
        async for resp in call:
            await call.write(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=resp.type_url, response_nonce=resp.nonce
                )
            )
    else:
        call = stub.StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER))
        await call.write(
            discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=eds_names)
        )
        async for resp in call:
            names = eds_names if resp.type_url == ENDPOINT else []
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url=resp.type_url,
                    version_info=resp.version_info,
                    response_nonce=resp.nonce,
                    resource_names=names,
                )
            )
    del queue


_STARTED = time.monotonic()


def _uptime() -> float:
    """Seconds since this client process started (dates each reconnect)."""
    return time.monotonic() - _STARTED


async def _reconnecting_stream(stub: Any, api: str, node_id: str, eds_names: list[str]) -> None:
    """One client stream that, like Envoy, opens again after a backoff when
    the server ends it. (Before, one failed stream failed its worker's task
    group and with it every other stream of the process: at 10,000 streams
    the initial sync never finished.) Each reconnect is reported on stderr."""
    backoff = 0.25
    while True:
        try:
            await _client_stream(stub, api, node_id, eds_names)
        except grpc.aio.AioRpcError as exc:
            print(
                f"RECONNECT {node_id} {exc.code().name}: {exc.details()} at {_uptime():.1f}s",
                file=sys.stderr,
            )
        except asyncio.InvalidStateError as exc:  # grpc.aio: a write after the call ended
            print(f"RECONNECT {node_id} {exc} at {_uptime():.1f}s", file=sys.stderr)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 4.0)


async def _worker_main(target: str, api: str, first: int, count: int, services: int) -> None:
    eds_names = [f"svc-{i:05d}" for i in range(services)]
    # a few channels (HTTP/2 connections) per worker, like separate Envoys
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(c) for c in channels]
    async with asyncio.TaskGroup() as group:
        for i in range(count):
            group.create_task(
                _reconnecting_stream(stubs[i % len(stubs)], api, f"node-{first + i}", eds_names),
                name=f"bench-stream-{first + i}",
            )


def worker(target: str, api: str, first: int, count: int, services: int) -> None:
    with contextlib.suppress(KeyboardInterrupt, grpc.aio.AioRpcError):
        asyncio.run(_worker_main(target, api, first, count, services))


# -- server side --------------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def acked(label: str) -> float:
    """ACKs the server recorded for a type label. Reads that one counter
    family: the whole registry (process collector included) is far dearer,
    and the harness polls it every few milliseconds in the server's own
    process, so it counted in the server's CPU."""
    for family in metrics.ACKS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("type") == label:
                return float(sample.value)
    return 0.0


async def _wait_acks(label: str, target: float, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if acked(label) >= target:
            return True
        await asyncio.sleep(0.002)
    return False


async def run_api(api: str, args: argparse.Namespace) -> dict[str, Any]:
    cache = SnapshotCache()
    settings = ServerSettings(
        tcp_address="127.0.0.1:0",
        stream=StreamSettings(coalesce_delay=args.coalesce),
    )
    server = AdsServer(cache, settings)
    snapshot = cache.build_snapshot(mesh(args.services), "v0")
    cache.set_default_snapshot(snapshot)
    await server.start()
    rss_before = rss_mib()
    ctx = multiprocessing.get_context("spawn")
    per = args.streams // args.workers
    procs = [
        ctx.Process(
            target=worker,
            args=(f"127.0.0.1:{server.tcp_port}", api, w * per, per, args.services),
            daemon=True,
        )
        for w in range(args.workers)
    ]
    n = per * args.workers
    for p in procs:
        p.start()
    try:
        start = acked("EDS")
        ok = await _wait_acks("EDS", start + n, 300)
        if not ok:
            raise SystemExit(f"{api}: initial sync of {n} streams did not finish")
        await asyncio.sleep(1.0)  # let every worker settle
        rss_idle = rss_mib()
        times, cpus = [], []
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        for round_ in range(1, args.rounds + 1):
            baseline = acked("EDS")
            new = cache.build_snapshot(mesh(args.services, bump=round_), f"v{round_}")
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            cache.set_default_snapshot(new)
            if not await _wait_acks("EDS", baseline + n, 60):
                raise SystemExit(f"{api}: round {round_} did not converge")
            times.append(time.perf_counter() - t0)
            cpus.append(cpu_seconds() - cpu0)
            await asyncio.sleep(0.3)
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return {
            "api": api,
            "streams": n,
            "rss_before": rss_before,
            "rss_idle": rss_idle,
            "kib_per_stream": (rss_idle - rss_before) * 1024 / n,
            "converge_median": statistics.median(times),
            "converge_max": max(times),
            "cpu_median": statistics.median(cpus),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(10)
        await server.stop(1.0)


def _run_child(api: str, argv: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--api", api, "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line.removeprefix("RESULT ")))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--coalesce", type=float, default=0.1)
    parser.add_argument("--profile", action="store_true", help="cProfile the change rounds")
    parser.add_argument("--api", choices=["delta", "sotw", "both"], default="both")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.api != "both":
        result = await run_api(args.api, args)
        if args.json:
            print("RESULT " + json.dumps(result))
            return
        results = [result]
    else:
        # each API in a fresh process, so neither inherits the other's heap
        results = [_run_child(api, sys.argv[1:]) for api in ("delta", "sotw")]
    print(
        f"\nADS fan-out: {results[0]['streams']} streams from {args.workers} client processes, "
        f"{args.services} clusters + {args.services} endpoint sets (10 endpoints each), "
        f"coalesce {args.coalesce * 1000:.0f} ms, {args.rounds} rounds, {os.cpu_count()} cores"
    )
    header = f"{'':44}" + "".join(f"{r['api']:>12}" for r in results)
    print(header)
    rows = [
        ("one-endpoint change, all ACKed (median s)", "converge_median", "{:.3f}"),
        ("one-endpoint change, all ACKed (max s)", "converge_max", "{:.3f}"),
        ("server CPU-s per change (median)", "cpu_median", "{:.3f}"),
        ("server RSS before streams (MiB)", "rss_before", "{:.1f}"),
        ("server RSS, streams idle (MiB)", "rss_idle", "{:.1f}"),
        ("KiB per stream", "kib_per_stream", "{:.1f}"),
    ]
    for label, key, fmt in rows:
        print(f"{label:44}" + "".join(f"{fmt.format(r[key]):>12}" for r in results))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
