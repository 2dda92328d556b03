"""`nodemesh demo`: the article's canary through a real Envoy, no Kubernetes.

The control plane serves `examples/canary/` over ADS on a Unix socket; a real
Envoy boots from `envoy/bootstrap.yaml`; one httpbin-compatible backend runs
per Deployment replica; then the article's curl loop runs against Envoy's
listener for the `httpbin` Service and the observed split is judged against
the configured one.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envoy.config.route.v3 import route_pb2

from nodemesh import assets
from nodemesh.cmd.demo.backends import BackendFleet
from nodemesh.cmd.demo.canary import (
    DemoError,
    backend_specs,
    configured_weights,
    find_redirect,
    load_weighted_envoy_config,
    with_weights,
)
from nodemesh.cmd.demo.flows import DemoFlows
from nodemesh.cmd.demo.traffic import LoopResult, format_split, judge_split, request_loop
from nodemesh.cmd.status_view import format_status
from nodemesh.node.envoy_process import EnvoyProcess, render_bootstrap
from nodemesh.sources.files import FileSource
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig
from nodemesh.xds.translate import ROUTE, TranslateOptions

EXAMPLES = assets.example_dir("canary")
EXAMPLES_ROOT = assets.asset_root() / "examples"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    source_dir: Path = EXAMPLES
    requests: int = 400
    rounds: int = 1  # 0: until interrupted
    weights: tuple[int, ...] | None = None
    host: str = "httpbin"
    namespace: str = "default"
    node_id: str = "demo-node"
    concurrency: int = 8
    api_type: str = "DELTA_GRPC"


Out = Callable[[str], None]


class Demo:
    def __init__(self, options: DemoOptions, workdir: Path, out: Out) -> None:
        self.options = options
        self.out = out
        self.plane = ControlPlane(
            ControlPlaneConfig(
                source_dirs=(options.source_dir,),
                xds_tcp=None,
                xds_socket=workdir / "xds.sock",
                admin_port=0,
                translate=TranslateOptions(access_log_socket=str(workdir / "als.sock")),
            )
        )
        self.flows = DemoFlows(workdir, options.node_id, lambda: self.plane.model)
        self.envoy = EnvoyProcess(
            workdir,
            render_bootstrap(xds_socket=workdir / "xds.sock", api_type=options.api_type),
            options.node_id,
        )
        self.url = ""
        self.sent = 0  # requests answered, of which access logs are expected

    def route(self) -> route_pb2.RouteConfiguration:
        model, translation = self.plane.model, self.plane.translation
        assert model is not None and translation is not None
        redirect = find_redirect(model, self.options.namespace, self.options.host)
        route = translation.resources[ROUTE].get(redirect.route_config)
        if not isinstance(route, route_pb2.RouteConfiguration):
            raise DemoError(f"no RouteConfiguration {redirect.route_config!r} was translated")
        return route

    async def start(self, started: float) -> None:
        model = self.plane.store.current
        redirect = find_redirect(model, self.options.namespace, self.options.host)
        fleet = BackendFleet(backend_specs(model))
        self.fleet = fleet
        try:
            await fleet.start()
        except OSError as exc:
            raise DemoError(
                f"cannot start the backends the EndpointSlices in {self.options.source_dir} "
                f"name ({', '.join(f'{s.host}:{s.port}' for s in fleet.specs)}): {exc}"
            ) from exc
        await self.flows.start()
        await self.envoy.start()
        await self.envoy.wait_for_listener(redirect.proxy_port)
        self.url = f"http://127.0.0.1:{redirect.proxy_port}/headers"
        first = await self._first_request_served(started)
        self.out(
            f"nodemesh demo: {self.options.source_dir} (model {model.version[:12]})\n"
            f"  control plane  unix:{self.plane.config.xds_socket} "
            f"({self.options.api_type}), admin 127.0.0.1:{self.plane.admin_port}\n"
            f"  envoy          node {self.options.node_id}, listener {redirect.listener} "
            f"on 127.0.0.1:{redirect.proxy_port}\n"
            + "".join(
                f"  backend        {s.replica} ({s.workload}) on {s.host}:{s.port}\n"
                for s in fleet.specs
            )
            + f"  first request served {first:.2f} s after start"
        )

    async def _first_request_served(self, started: float) -> float:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            probe = await request_loop(self.url, self.options.host, 1, 1)
            if probe.ok:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise DemoError(f"Envoy never answered on {self.url}: {self.envoy.log_tail()}")

    async def measure(self, label: str) -> bool:
        weights = configured_weights(self.route(), self.options.host)
        result = await self._loop(self.options.requests)
        self.sent += result.total
        verdicts = judge_split(weights, result.by_workload)
        ok = all(v.within for v in verdicts) and not result.failures
        self.out(
            f"\n{label}: {result.total} requests with Host: {self.options.host}, "
            f"{len(result.failures)} failed\n{format_split(verdicts)}"
        )
        return ok

    async def _loop(self, count: int | None, stop: asyncio.Event | None = None) -> LoopResult:
        workloads = {s.replica: s.workload for s in self.fleet.specs}
        return await request_loop(
            self.url, self.options.host, count, self.options.concurrency, workloads, stop=stop
        )

    async def change_weights(self, weights: tuple[int, ...]) -> bool:
        """Apply new weights while a request loop runs; True if none failed."""
        source = self.plane.sources[0]
        if not isinstance(source, FileSource):
            raise DemoError("the demo changes weights in its file source, and has none")
        raw = load_weighted_envoy_config(self.options.source_dir)
        stop = asyncio.Event()
        background = asyncio.create_task(self._loop(None, stop), name="demo-during-change")
        await asyncio.sleep(0.3)
        self.plane.store.apply(source.source_name, with_weights(raw, weights))
        await self.wait_synced()
        await asyncio.sleep(0.3)
        stop.set()
        during = await background
        self.sent += during.total
        self.out(
            f"\nlive change to weights {','.join(map(str, weights))}: "
            f"{during.total} requests during the change, {len(during.failures)} failed"
        )
        return not during.failures

    async def flows_settled(self, timeout: float = 5.0) -> None:
        """Until Envoy's access logs of the requests sent have arrived (Envoy
        flushes them every 250 ms), or `timeout`: the report then says what came."""
        deadline = time.monotonic() + timeout
        # A count the gRPC handler bumps, with no event to wait on: poll it.
        while time.monotonic() < deadline and len(self.flows.l7()) < self.sent:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def wait_synced(self, timeout: float = 30.0) -> None:
        """Until the demo Envoy has ACKed the model version now published."""
        try:
            await self.plane.wait_synced(self.options.node_id, timeout)
        except TimeoutError as exc:
            raise DemoError(
                f"Envoy did not ACK the new configuration within {timeout:.0f} s"
            ) from exc

    async def stop(self) -> None:
        await self.envoy.stop()
        await self.flows.stop()
        fleet = getattr(self, "fleet", None)
        if fleet is not None:
            await fleet.stop()


async def _until_ready(plane: ControlPlane, task: asyncio.Task[None], timeout: float = 30) -> None:
    """Until the first model is served; fail at once if the control plane dies."""
    ready = asyncio.create_task(plane.ready.wait(), name="demo-ready")
    await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done():
        task.result()  # re-raises what ended it
        raise DemoError("the control plane stopped before serving a model")
    if not plane.ready.is_set():
        raise DemoError(f"the control plane served no model within {timeout:.0f} s")


async def run_demo(options: DemoOptions, out: Out = print) -> int:
    started = time.monotonic()
    if not options.source_dir.is_dir():
        raise DemoError(f"--source-dir: {options.source_dir} is not a directory")
    if options.weights is not None:  # refuse bad weights before starting anything
        with_weights(load_weighted_envoy_config(options.source_dir), options.weights)
    with tempfile.TemporaryDirectory(prefix="nodemesh-demo-") as tmp:
        demo = Demo(options, Path(tmp), out)
        plane_task = asyncio.create_task(demo.plane.run(), name="control-plane")
        try:
            await _until_ready(demo.plane, plane_task)
            await demo.start(started)
            ok = await demo.measure("configured split")
            if options.weights is not None:
                ok = await demo.change_weights(options.weights) and ok
                ok = await demo.measure("after the live change") and ok
            round_no = 1
            while options.rounds == 0 or round_no < options.rounds:
                round_no += 1
                ok = await demo.measure(f"round {round_no}") and ok
            out("\n" + format_status(demo.plane.syncz()))
            await demo.flows_settled()
            out("\n" + demo.flows.report())
            out("\nresult: " + ("split within tolerance" if ok else "FAILED"))
            return 0 if ok else 1
        finally:
            await demo.stop()
            plane_task.cancel()
            await asyncio.gather(plane_task, return_exceptions=True)


def example_dir(name: str) -> Path:
    """`--example NAME`: examples/NAME (canary: the article's CEC; canary-httproute:
    the same split as a Gateway API HTTPRoute)."""
    found = EXAMPLES_ROOT / name
    if "/" in name or not found.is_dir():
        known = ", ".join(sorted(p.name for p in EXAMPLES_ROOT.iterdir() if p.is_dir()))
        raise DemoError(f"--example: no example {name!r} (there are: {known})")
    return found


def parse_weights(text: str) -> tuple[int, ...]:
    try:
        weights = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise DemoError(f"--weights: {text!r} is not a comma-separated list of integers") from exc
    if any(w < 0 for w in weights) or sum(weights) == 0:
        raise DemoError(f"--weights: {text!r} needs non-negative weights with a positive sum")
    return weights
