"""Side by side: the same 1,000-cluster config served to 100 clients by
nodemesh (gRPC ADS, SotW) and by sovereign (REST-JSON xDS, the existing
Python control plane), in one run. Reports wall time until every client has
the full config, and server CPU-seconds per client (the whole process tree).

sovereign lives in its own venv (it pins its own dependencies):
    python3 -m venv /tmp/sovereign-venv && /tmp/sovereign-venv/bin/pip install sovereign
Usage:
    .venv/bin/python -m bench.ads_vs_sovereign [--sovereign-venv /tmp/sovereign-venv]
        [--clusters 1000] [--clients 100] [--sovereign-workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import duration_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

SOVEREIGN_TEMPLATE = """
def call(instances, discovery_request, **kwargs):
    for inst in instances:
        yield {
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": inst["name"],
            "connect_timeout": "1s",
            "type": "STATIC",
            "load_assignment": {
                "cluster_name": inst["name"],
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": inst["address"], "port_value": inst["port"]}}}}]}],
            },
        }
"""


def instances(n: int) -> list[dict[str, Any]]:
    return [
        {"name": f"svc-{i:04d}", "address": f"10.0.{i // 250}.{i % 250 + 1}", "port": 8080}
        for i in range(n)
    ]


def clusters(n: int) -> dict[str, cluster_pb2.Cluster]:
    out = {}
    for inst in instances(n):
        c = cluster_pb2.Cluster(name=inst["name"], connect_timeout=duration_pb2.Duration(seconds=1))
        c.type = cluster_pb2.Cluster.STATIC
        c.load_assignment.cluster_name = inst["name"]
        sa = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
        sa.address, sa.port_value = inst["address"], inst["port"]
        out[c.name] = c
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_cpu(pid: int) -> float:
    """utime+stime of `pid` and all its descendants (seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


# -- nodemesh -------------------------------------------------------------------


def serve_nodemesh(port: int, n: int) -> None:
    """Child process: the nodemesh ADS server with the clusters prebuilt."""
    from nodemesh.xds.cache import SnapshotCache
    from nodemesh.xds.server import AdsServer, ServerSettings

    async def run() -> None:
        cache = SnapshotCache()
        cache.set_default_snapshot(cache.build_snapshot({CLUSTER: clusters(n)}, "v1"))
        server = AdsServer(cache, ServerSettings(tcp_address=f"127.0.0.1:{port}"))
        await server.start()
        print("READY", flush=True)
        await server.wait_closed()

    asyncio.run(run())


async def nodemesh_client(port: int, i: int, n: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        node = base_pb2.Node(id=f"client-{i}", cluster="bench")
        await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER))
        resp = await call.read()
        got = [cluster_pb2.Cluster.FromString(a.value).name for a in resp.resources]
        assert len(got) == n, len(got)
        call.cancel()


def _spawn_nodemesh(port: int, n: int) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "--serve-nodemesh", str(port), "--clusters", str(n)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("READY"):
            return proc
    raise SystemExit("the nodemesh server process did not start")


async def bench_nodemesh(args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    proc = _spawn_nodemesh(port, args.clusters)
    try:
        await nodemesh_client(port, -1, args.clusters)  # warm-up
        return await _measure(
            proc.pid, [nodemesh_client(port, i, args.clusters) for i in range(args.clients)]
        )
    finally:
        proc.terminate()
        proc.wait(10)


# -- sovereign -------------------------------------------------------------------


async def sovereign_client(session: aiohttp.ClientSession, url: str, i: int, n: int) -> None:
    body = {
        "node": {
            "id": f"client-{i}",
            "cluster": "bench",
            "user_agent_name": "envoy",
            "user_agent_build_version": {"version": {"major_number": 1, "minor_number": 40}},
        },
        "version_info": "0",
        "resource_names": [],
    }
    async with session.post(url, json=body) as resp:
        data = await resp.json()
        assert resp.status == 200, resp.status
        assert len(data["resources"]) == n, len(data["resources"])


def _spawn_sovereign(venv: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(venv / "bin" / "sovereign")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def bench_sovereign(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    template = workdir / "sov_clusters.py"
    template.write_text(SOVEREIGN_TEMPLATE)
    config = {
        "templates": {
            "default": [{"type": "clusters", "spec": {"protocol": "python", "path": str(template)}}]
        },
        "sources": [
            {
                "type": "inline",
                "scope": "default",
                "config": {"instances": instances(args.clusters)},
            }
        ],
        "matching": {"enabled": False},
    }
    (workdir / "sovereign.json").write_text(json.dumps(config))
    port = free_port()
    env = {
        **os.environ,
        "SOVEREIGN_CONFIG": f"file://{workdir / 'sovereign.json'}",
        "SOVEREIGN_HOST": "127.0.0.1",
        "SOVEREIGN_PORT": str(port),
        "SOVEREIGN_WORKERS": str(args.sovereign_workers),
        "SOVEREIGN_NODE_MATCHING_ENABLED": "false",
    }
    proc = _spawn_sovereign(Path(args.sovereign_venv), env)
    url = f"http://127.0.0.1:{port}/v3/discovery:clusters"
    try:
        timeout = aiohttp.ClientTimeout(total=600)
        connector = aiohttp.TCPConnector(limit=args.clients)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await _wait_http(session, f"http://127.0.0.1:{port}/healthcheck")
            for w in range(args.sovereign_workers * 2):  # warm every worker
                await sovereign_client(session, url, -1 - w, args.clusters)
            return await _measure(
                proc.pid,
                [sovereign_client(session, url, i, args.clusters) for i in range(args.clients)],
            )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


async def _wait_http(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"sovereign did not come up at {url}")


async def _measure(pid: int, clients: list[Any]) -> dict[str, float]:
    cpu0, t0 = tree_cpu(pid), time.perf_counter()
    await asyncio.gather(*clients)
    wall, cpu = time.perf_counter() - t0, tree_cpu(pid) - cpu0
    return {"wall": wall, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sovereign-venv", default="/tmp/sovereign-venv")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--sovereign-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--serve-nodemesh", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_nodemesh:
        serve_nodemesh(args.serve_nodemesh, args.clusters)
        return
    if not (Path(args.sovereign_venv) / "bin" / "sovereign").exists():
        raise SystemExit(f"no sovereign in {args.sovereign_venv}; see this script's docstring")
    nodemesh = asyncio.run(bench_nodemesh(args))
    with tempfile.TemporaryDirectory() as tmp:
        sovereign = asyncio.run(bench_sovereign(args, Path(tmp)))
    n = args.clients
    print(
        f"\n{args.clusters} clusters to {n} concurrent clients "
        f"(nodemesh: 1 process, gRPC SotW; sovereign: {args.sovereign_workers} workers, REST-JSON)"
    )
    rows = [
        ("wall time, all clients served (s)", nodemesh["wall"], sovereign["wall"], "{:12.3f}"),
        ("server CPU-s total", nodemesh["cpu"], sovereign["cpu"], "{:12.3f}"),
        (
            "server CPU-ms per client",
            nodemesh["cpu"] * 1000 / n,
            sovereign["cpu"] * 1000 / n,
            "{:12.2f}",
        ),
    ]
    print(f"{'':34}{'nodemesh':>12}{'sovereign':>12}")
    for label, ours, theirs, fmt in rows:
        print(f"{label:34}{fmt.format(ours)}{fmt.format(theirs)}")


if __name__ == "__main__":
    main()
