"""The largest event-loop stall while the control plane takes in a large CEC
(issue 10 item 7), side by side: building and translating on the loop (as
before) against in a worker thread (today), for the 6.3 MB CEC of the issue
(100,000 weighted clusters; over today's object limit, so refused) and for
the largest CEC under the limit.

    .venv/bin/python -m bench.loop_stall [--clusters 100000]

A probe task sleeps 5 ms in a loop on the control plane's own event loop;
the stall is how late it wakes. /healthz and new xDS streams are served by
the same loop, so they wait at least that long.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nodemesh.model.store import MeshStore
from nodemesh.sources import documents
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig

CANARY = Path(__file__).resolve().parents[1] / "examples" / "canary"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def big_cec(clusters: int) -> str:
    names = ["default/httpbin-v1", "default/httpbin-v2"]
    weighted = [{"name": names[i % 2], "weight": 1} for i in range(clusters)]
    route = {
        "@type": ROUTE,
        "name": "big",
        "virtual_hosts": [
            {
                "name": "big",
                "domains": ["big"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "route": {"weighted_clusters": {"clusters": weighted}},
                    }
                ],
            }
        ],
    }
    cec = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEnvoyConfig",
        "metadata": {"name": "big", "namespace": "default"},
        "spec": {"resources": [route]},
    }
    return json.dumps(cec)  # JSON is YAML, and the cheapest to write this big


async def _probe(stalls: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        stalls.append(time.perf_counter() - started - 0.005)


@contextlib.contextmanager
def _on_loop(plane: ControlPlane) -> Iterator[None]:
    """The old wiring: build and translate on the loop itself."""
    store: Any = plane.store

    async def build_inline() -> Any:
        return MeshStore.build(plane.store)

    async def publish_inline(model: Any) -> None:
        plane.publish(model)

    store.build_async = build_inline
    plane_any: Any = plane
    plane_any.publish_async = publish_inline
    yield


async def _run(directory: Path, text: str, inline: bool) -> tuple[float, float]:
    config = ControlPlaneConfig(source_dirs=(directory,), xds_tcp="127.0.0.1:0", admin_port=0)
    plane = ControlPlane(config)
    with contextlib.ExitStack() as stack:
        if inline:
            stack.enter_context(_on_loop(plane))
        task = asyncio.create_task(plane.run())
        await asyncio.wait_for(plane.ready.wait(), 60)
        generation = plane.model.generation if plane.model else 0
        stalls: list[float] = []
        stop = asyncio.Event()
        probe = asyncio.create_task(_probe(stalls, stop))
        started = time.perf_counter()
        (directory / "big.yaml").write_text(text)
        source: Any = plane.sources[0]
        deadline = time.perf_counter() + 300
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
            published = plane.model is not None and plane.model.generation > generation
            refused = any("big.yaml" in p for p in source.problems())
            if published or refused:
                break
        took = time.perf_counter() - started
        stop.set()
        await probe
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return max(stalls, default=0.0), took


def _case(clusters: int, inline: bool, limit: int | None) -> tuple[float, float, int]:
    directory = Path(tempfile.mkdtemp(prefix="loop-stall-"))
    try:
        for path in CANARY.glob("*.yaml"):
            shutil.copy(path, directory / path.name)
        text = big_cec(clusters)
        saved = documents.MAX_OBJECT_BYTES, documents.MAX_FILE_BYTES
        if limit is None:  # before: no size limits at all
            documents.MAX_OBJECT_BYTES = documents.MAX_FILE_BYTES = 1 << 40
        try:
            stall, took = asyncio.run(_run(directory, text, inline))
        finally:
            documents.MAX_OBJECT_BYTES, documents.MAX_FILE_BYTES = saved
        return stall, took, len(text)
    finally:
        shutil.rmtree(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=100_000)
    args = parser.parse_args()
    under = int(documents.MAX_OBJECT_BYTES * 0.95 / 45)  # ~45 bytes per entry
    rows = [
        (f"{args.clusters} clusters, no limits, on the loop (before)", args.clusters, True, None),
        (f"{args.clusters} clusters, limits, worker thread (now)", args.clusters, False, 1),
        (f"{under} clusters (under limit), on the loop", under, True, 1),
        (f"{under} clusters (under limit), worker thread (now)", under, False, 1),
    ]
    print(f"{'case':62} {'size':>9} {'max stall':>10} {'to model':>9}")
    for label, clusters, inline, limit in rows:
        stall, took, size = _case(clusters, inline, limit)
        print(f"{label:62} {size / 1e6:7.2f}MB {stall * 1000:8.1f}ms {took:8.2f}s")


if __name__ == "__main__":
    main()
