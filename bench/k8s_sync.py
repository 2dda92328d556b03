"""Kubernetes watch benchmark against the API server double.

    .venv/bin/python -m bench.k8s_sync [--services 5000] [--endpoints 10] [--changes 30]
    .venv/bin/python -m bench.k8s_sync --with-control-plane
    .venv/bin/python -m bench.k8s_sync --serve-process

--with-control-plane runs the sync feeding the xDS control plane twice, each
in a fresh process, side by side: with the whole kubernetes-asyncio package
imported first (what the agent did before nodemesh.k8s_watch.kube_core) and
as the agent imports it now. --serve-process does the same comparison on
the shipped `nodemesh serve --kubernetes` process, measured from outside.

The double runs in its own process (so its CPU and memory are not ours),
serving N Services with one EndpointSlice of M endpoints each. This process
is the agent's Kubernetes side: InformerSet (kubernetes-asyncio) feeding the
real MeshStore. It measures, in one run:

- initial sync to first model: from start to a built model holding every
  Service and backend (target <= 5 s);
- one EndpointSlice change to model: PUT on the double until the built model
  has the new endpoint (target <= 50 ms), over --changes changes;
- agent RSS after sync (target <= 150 MiB);
- side by side: listing every EndpointSlice through kubernetes-asyncio's
  typed models (what a default client does) against our raw-JSON path.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.informer import content, normalize, object_meta
from nodemesh.k8s_watch.informer_set import InformerSet
from nodemesh.k8s_watch.resources import ENDPOINT_SLICES, SERVICES, default_resources
from nodemesh.k8s_watch.settings import WatchSettings
from nodemesh.k8s_watch.watching import list_all
from nodemesh.model.objects import ServiceName
from nodemesh.model.store import MeshStore

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_double(services: int, endpoints: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "integration.apiserver_double",
            "--services",
            str(services),
            "--endpoints",
            str(endpoints),
            "--bookmark-interval",
            "5",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"double failed to start: {line!r}")
    return proc, line.split()[-1]


@dataclass
class Agent:
    store: MeshStore
    source: InformerSet
    changed: asyncio.Event
    task: asyncio.Task[None]
    client: Any


async def sync(url: str, services: int) -> tuple[float, float, Agent]:
    client = await make_api_client(url)
    store = MeshStore()
    changed = asyncio.Event()
    settings = WatchSettings()
    source = InformerSet(
        KubeApi(client, settings),
        store,
        settings=settings,
        resources=default_resources("node-a"),
        on_change=changed.set,
    )
    started = time.perf_counter()
    task = asyncio.create_task(source.run(), name="watch-source")
    await source.wait_synced(120)
    synced = time.perf_counter() - started
    model = store.build()
    first_model = time.perf_counter() - started
    assert len(model.services) == services, len(model.services)
    return synced, first_model, Agent(store, source, changed, task, client)


CHANGED_SLICE = "/apis/discovery.k8s.io/v1/namespaces/ns7/endpointslices/svc7-abcde"
CHANGED_SERVICE = ServiceName("ns7", "svc7")


async def next_slice(http: aiohttp.ClientSession, i: int) -> tuple[dict[str, Any], str]:
    """The changed slice with its first endpoint at a new address (returned)."""
    async with http.get(CHANGED_SLICE) as resp:
        new: dict[str, Any] = copy.deepcopy(await resp.json())
    addr = f"10.200.{i // 250}.{i % 250 + 1}"
    new["endpoints"][0]["addresses"] = [addr]
    return new, addr


async def put_slice(http: aiohttp.ClientSession, body: dict[str, Any]) -> None:
    async with http.put(CHANGED_SLICE, json=body) as resp:
        assert resp.status == 200, await resp.text()


async def endpoint_changes(url: str, agent: Agent, n: int) -> list[float]:
    store, changed = agent.store, agent.changed
    target = CHANGED_SERVICE
    out = []
    async with aiohttp.ClientSession(url) as http:
        for i in range(n):
            body, addr = await next_slice(http, i)
            changed.clear()
            t0 = time.perf_counter()
            await put_slice(http, body)
            while True:
                await changed.wait()
                changed.clear()
                model = store.build()
                if any(b.address == addr for b in model.backends_of(target, 80)):
                    break
            out.append(time.perf_counter() - t0)
    return out


async def bytes_only(url: str) -> float:
    """The double's own share: every Service and EndpointSlice in one unpaged
    list each, read as bytes (no parsing on our side)."""
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(url) as http:
        for path in ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices"):
            async with http.get(path) as resp:
                await resp.read()
    return time.perf_counter() - t0


async def typed_vs_raw(url: str) -> tuple[float, float, float]:
    # Imported here: the generated API classes and models are what the agent
    # does not load (nodemesh.k8s_watch.kube_core), and the RSS above is the agent's.
    from kubernetes_asyncio import client as k8s

    client = await make_api_client(url)
    try:
        server_s = await bytes_only(url)
        t0 = time.perf_counter()
        typed = await k8s.DiscoveryV1Api(client).list_endpoint_slice_for_all_namespaces()
        typed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        raw = await list_all(KubeApi(client, WatchSettings(list_page_size=0)), ENDPOINT_SLICES)
        raw_s = time.perf_counter() - t0
        assert len(typed.items) == len(raw.items)
        return typed_s, raw_s, server_s
    finally:
        await client.close()


async def list_ab(url: str, rounds: int) -> dict[bool, list[float]]:
    """Listing time (every Service and EndpointSlice, prepared as the informer
    does) with the next page prefetched or fetched after; interleaved."""
    client = await make_api_client(url)
    out: dict[bool, list[float]] = {True: [], False: []}
    try:
        for _ in range(rounds):
            for prefetch in (True, False):
                api = KubeApi(client, WatchSettings())
                t0 = time.perf_counter()
                for spec in (SERVICES, ENDPOINT_SLICES):

                    def prepare(item: dict[str, Any], spec: Any = spec) -> Any:
                        _, raw = normalize(spec, item)
                        return content(spec, raw), object_meta(raw)

                    await list_all(api, spec, prepare, prefetch=prefetch)
                out[prefetch].append(time.perf_counter() - t0)
    finally:
        await client.close()
    return out


def _complete(model: Any, services: int) -> bool:
    return (
        model is not None
        and len(model.services) == services
        and len(model.endpoint_slices) == services
    )


def _has_backend(model: Any, addr: str) -> bool:
    return model is not None and any(
        b.address == addr for b in model.backends_of(CHANGED_SERVICE, 80)
    )


async def control_plane_run(services: int, endpoints: int, changes: int) -> dict[str, float]:
    """The same sync, feeding the xDS control plane (translate, snapshot cache,
    ADS server without clients) as `nodemesh serve` runs it: this process's RSS
    is then the whole control-plane side of an agent, minus the datapath."""
    from nodemesh.k8s_watch.source import KubernetesSource
    from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig

    port = free_port()
    proc, url = start_double(services, endpoints)
    try:
        rss_before = rss_mib()
        plane = ControlPlane(ControlPlaneConfig(xds_tcp=f"127.0.0.1:{port}", admin_port=0))
        client = await make_api_client(url)
        settings = WatchSettings()
        k8s_source = KubernetesSource(
            KubeApi(client, settings), plane.store, node="node-a", settings=settings,
            resources=default_resources("node-a"), report_status=False,
        )  # fmt: skip
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(plane.run(), name="control-plane"),
            asyncio.create_task(k8s_source.run(), name="k8s"),
        ]
        # Polled: the control plane signals only "ready" (its first, possibly empty, model).
        while not _complete(plane.model, services):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        first = time.perf_counter() - started
        rss = rss_mib()
        # Steady state: each change is translated and published as a new snapshot.
        async with aiohttp.ClientSession(url) as http:
            for i in range(changes):
                body, addr = await next_slice(http, i)
                await put_slice(http, body)
                while not _has_backend(plane.model, addr):  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
        rss_changes = rss_mib()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        await client.close()
    finally:
        proc.terminate()
        proc.wait(10)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "first": first,
        "rss_before": rss_before,
        "rss": rss,
        "rss_changes": rss_changes,
        "peak": peak,
    }


# The old import path, for the side-by-side: the whole kubernetes-asyncio
# package (generated API classes and models) loaded before nodemesh, so
# nodemesh.k8s_watch.kube_core finds it imported and leaves it as it is.
FULL_CLIENT_CHILD = (
    "import kubernetes_asyncio, runpy; "
    "runpy.run_module('bench.k8s_sync', run_name='__main__', alter_sys=True)"
)


def control_plane_child(mode: str, args: argparse.Namespace) -> dict[str, float]:
    argv = [
        "--control-plane-child",
        "--services",
        str(args.services),
        "--endpoints",
        str(args.endpoints),
        "--changes",
        str(args.changes),
    ]
    if mode == "full":
        cmd = [sys.executable, "-c", FULL_CLIENT_CHILD, *argv]
    else:
        cmd = [sys.executable, "-m", "bench.k8s_sync", *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True, timeout=600)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def with_control_plane(args: argparse.Namespace) -> None:
    """Each variant in a fresh process of its own, one after the other."""
    runs = {mode: control_plane_child(mode, args) for mode in ("full", "lean")}
    print(
        f"cluster: {args.services} Services, {args.services * args.endpoints} endpoints; "
        "watcher feeding the xDS control plane, each column a fresh process"
    )
    print(f"{'measure':<44}{'full client':>14}{'kube_core':>12}{'target':>10}")
    rows = (
        ("sync to first translated, published model (s)", "first", "{:.2f}", ""),
        ("RSS before sync (MiB)", "rss_before", "{:.1f}", ""),
        ("RSS after sync (MiB)", "rss", "{:.1f}", "<= 150"),
        ("RSS after the EndpointSlice changes (MiB)", "rss_changes", "{:.1f}", "<= 150"),
        ("peak RSS, sync and changes (MiB)", "peak", "{:.1f}", ""),
    )
    for label, key, fmt, target in rows:
        full, lean = (fmt.format(runs[m][key]) for m in ("full", "lean"))
        print(f"{label:<44}{full:>14}{lean:>12}{target:>10}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_process(full_client: bool, url: str, settle: float) -> tuple[float, float, float]:
    """The shipped `nodemesh serve --kubernetes`, measured from outside: seconds
    to /readyz (first full sync published), then VmRSS and VmHWM (peak) once
    it has run `settle` more seconds."""
    prelude = "import kubernetes_asyncio; " if full_client else ""
    code = f"{prelude}import sys; from nodemesh.cmd.main import main; sys.exit(main(sys.argv[1:]))"
    admin = f"127.0.0.1:{free_port()}"
    cmd = [
        sys.executable, "-c", code, "serve", "--kubernetes", "--k8s-server", url,
        "--no-report-status", "--xds-address", f"127.0.0.1:{free_port()}",
        "--admin", admin, "--log-level", "warning",
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"nodemesh serve exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://{admin}/readyz", timeout=5):
                    break
            except OSError:  # not listening yet, or 503 until synced
                time.sleep(0.1)
        ready = time.perf_counter() - started
        time.sleep(settle)
        return ready, proc_status_mib(proc.pid, "VmRSS"), proc_status_mib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(30)


def serve_side_by_side(args: argparse.Namespace) -> None:
    proc, url = start_double(args.services, args.endpoints)
    try:
        runs = {full: serve_process(full, url, args.settle) for full in (True, False)}
    finally:
        proc.terminate()
        proc.wait(10)
    print(
        f"cluster: {args.services} Services, {args.services * args.endpoints} endpoints; "
        "the nodemesh serve --kubernetes process, measured from outside"
    )
    print(f"{'measure':<44}{'full client':>14}{'kube_core':>12}{'target':>10}")
    labels = ("start to /readyz (s)", f"VmRSS {args.settle:g} s later (MiB)", "VmHWM, peak (MiB)")
    for i, label in enumerate(labels):
        fmt = "{:.2f}" if i == 0 else "{:.1f}"
        target = "" if i == 0 else "<= 150"
        full, lean = (fmt.format(runs[mode][i]) for mode in (True, False))
        print(f"{label:<44}{full:>14}{lean:>12}{target:>10}")


async def main(args: argparse.Namespace) -> None:
    if args.control_plane_child:
        result = await control_plane_run(args.services, args.endpoints, args.changes)
        print(json.dumps(result))
        return
    proc, url = start_double(args.services, args.endpoints)
    try:
        rss_before = rss_mib()
        synced, first, agent = await sync(url, args.services)
        rss_sync = rss_mib()
        lat = await endpoint_changes(url, agent, args.changes)
        rss_after = rss_mib()
        peak_agent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        agent.task.cancel()
        await asyncio.wait([agent.task])
        await agent.client.close()
        typed_s, raw_s, server_s = await typed_vs_raw(url)
        ab = await list_ab(url, args.rounds)
    finally:
        proc.terminate()
        proc.wait(10)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lat_ms = sorted(x * 1000 for x in lat)
    p95 = lat_ms[max(0, int(len(lat_ms) * 0.95) - 1)]
    n_eps = args.services * args.endpoints
    print(
        f"cluster: {args.services} Services, {n_eps} endpoints "
        f"({args.services} EndpointSlices), double in its own process"
    )
    print(f"{'measure':<44}{'result':>14}{'target':>12}")
    print(f"{'initial list+watch synced (s)':<44}{synced:>14.2f}{'':>12}")
    print(f"{'initial sync to first model (s)':<44}{first:>14.2f}{'<= 5':>12}")
    print(
        f"{'EndpointSlice change to model, median (ms)':<44}"
        f"{statistics.median(lat_ms):>14.1f}{'<= 50':>12}"
    )
    print(f"{'EndpointSlice change to model, p95 (ms)':<44}{p95:>14.1f}{'':>12}")
    print(f"{'agent RSS before sync (MiB)':<44}{rss_before:>14.1f}{'':>12}")
    print(f"{'agent RSS after sync (MiB)':<44}{rss_sync:>14.1f}{'<= 150':>12}")
    print(f"{'agent RSS after changes (MiB)':<44}{rss_after:>14.1f}{'':>12}")
    print(f"{'agent peak RSS, sync and changes (MiB)':<44}{peak_agent:>14.1f}{'':>12}")
    print(f"{'peak RSS incl. the typed-model list (MiB)':<44}{peak:>14.1f}{'':>12}")
    print("side by side, one unpaged list of every EndpointSlice:")
    print(f"{'  kubernetes-asyncio typed models (s)':<44}{typed_s:>14.2f}")
    print(f"{'  nodemesh raw JSON path (s)':<44}{raw_s:>14.2f}")
    print(f"{'double serving all of it, bytes only (s)':<44}{server_s:>14.2f}")
    print(
        f"side by side, paged list of every Service and EndpointSlice, prepared "
        f"(median of {args.rounds}, interleaved):"
    )
    print(f"{'  next page prefetched (s)':<44}{statistics.median(ab[True]):>14.2f}")
    print(f"{'  page by page (s)':<44}{statistics.median(ab[False]):>14.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the prefetch A/B")
    parser.add_argument(
        "--with-control-plane", action="store_true", help="feed the xDS control plane instead"
    )
    parser.add_argument(
        "--serve-process",
        action="store_true",
        help="measure the nodemesh serve --kubernetes process from outside instead",
    )
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after /readyz")
    parser.add_argument("--control-plane-child", action="store_true", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.with_control_plane:
        with_control_plane(parsed)
    elif parsed.serve_process:
        serve_side_by_side(parsed)
    else:
        asyncio.run(main(parsed))
