"""Startup to first request served, and translation time of examples/canary.

Side by side in one run:
- time from process start of the control plane to the first 200 through a real
  Envoy over delta ADS, over SotW ADS, and (the floor) Envoy booting the very
  same translated resources as a static bootstrap, with no control plane;
- translation of examples/canary: parse+build the model, translate cold,
  translate again with one endpoint changed (memoized), and encode.

    .venv/bin/python -m bench.demo_startup [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from google.protobuf import json_format

from nodemesh.cmd.demo.backends import BackendFleet
from nodemesh.cmd.demo.canary import backend_specs, find_redirect
from nodemesh.cmd.demo.run import EXAMPLES
from nodemesh.cmd.demo.traffic import request_loop
from nodemesh.model.store import MeshStore
from nodemesh.node.envoy_process import EnvoyProcess, render_bootstrap
from nodemesh.sources.files import FileSource
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig
from nodemesh.xds.translate import Translator, encode, validate_envoy_config
from tests.xds.translate.envoy_static import static_bootstrap


async def _first_ok(url: str, started: float) -> float:
    while True:
        if (await request_loop(url, "httpbin", 1, 1)).ok:
            return time.perf_counter() - started
        await asyncio.sleep(0.005)


async def via_ads(api_type: str) -> float:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "xds.sock"
        plane = ControlPlane(
            ControlPlaneConfig(source_dirs=(EXAMPLES,), xds_tcp=None, xds_socket=sock, admin_port=0)
        )
        task = asyncio.create_task(plane.run())
        await plane.ready.wait()
        assert plane.model is not None
        fleet = BackendFleet(backend_specs(plane.model))
        envoy = EnvoyProcess(Path(tmp), render_bootstrap(xds_socket=sock, api_type=api_type), "b")
        try:
            await fleet.start()
            await envoy.start()
            port = find_redirect(plane.model, "default", "httpbin").proxy_port
            return await _first_ok(f"http://127.0.0.1:{port}/headers", started)
        finally:
            await envoy.stop()
            await fleet.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def static_floor() -> float:
    store = MeshStore(validators=[validate_envoy_config])
    FileSource(EXAMPLES, store).load()
    model = store.build()
    translation = Translator().translate(model)
    bootstrap = json.loads(json_format.MessageToJson(static_bootstrap(translation)))
    bootstrap["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fleet = BackendFleet(backend_specs(model))
        envoy = EnvoyProcess(Path(tmp), bootstrap, "static")
        try:
            await fleet.start()
            await envoy.start()
            port = find_redirect(model, "default", "httpbin").proxy_port
            return await _first_ok(f"http://127.0.0.1:{port}/headers", started)
        finally:
            await envoy.stop()
            await fleet.stop()


def translation_times(repeat: int = 200) -> dict[str, float]:
    def timed(fn: Callable[[], object]) -> float:
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    def build_model() -> object:
        store = MeshStore(validators=[validate_envoy_config])
        FileSource(EXAMPLES, store).load()
        return store.build()

    store = MeshStore(validators=[validate_envoy_config])
    FileSource(EXAMPLES, store).load()
    model = store.build()
    translation = Translator().translate(model)
    warm = Translator()
    warm.translate(model)
    return {
        "parse + build model": timed(build_model),
        "translate (cold)": timed(lambda: Translator().translate(model)),
        "translate (same model, memoized)": timed(lambda: warm.translate(model)),
        "encode all resources": timed(
            lambda: [encode(m) for per in translation.resources.values() for m in per.values()]
        ),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    variants: dict[str, Callable[[], Awaitable[float]]] = {
        "control plane + Envoy, delta ADS": lambda: via_ads("DELTA_GRPC"),
        "control plane + Envoy, SotW ADS": lambda: via_ads("GRPC"),
        "Envoy, static bootstrap (floor)": static_floor,
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):  # interleaved, so machine noise hits every variant alike
        for name, variant in variants.items():
            results[name].append(await variant())
    print(f"startup to first request served ({runs} runs each, interleaved)")
    print(f"  {'variant':<36} {'median':>8} {'min':>8} {'max':>8}")
    for name, samples in results.items():
        print(
            f"  {name:<36} {statistics.median(samples) * 1000:>6.0f}ms "
            f"{min(samples) * 1000:>6.0f}ms {max(samples) * 1000:>6.0f}ms"
        )
    print("\nexamples/canary translation (median of 200)")
    for name, seconds in translation_times().items():
        print(f"  {name:<36} {seconds * 1e6:>8.0f} µs")


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main())
