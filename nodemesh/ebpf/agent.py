"""The datapath half of the node agent: each model version into the kernel.

`DatapathAgent` is the seam the node agent's wiring uses: `start()` loads (or
re-adopts) the pinned datapath, `apply_model()` plans one model and applies
it, and `run()` follows a stream of models (e.g. `MeshStore.updates()`). A
plan that fails to apply leaves the previous one in place and is retried
with the next model; the failure is logged and counted, never raised into the
stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Gauge

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, loader, planner
from nodemesh.ebpf.endpoints import PodCgroups
from nodemesh.ebpf.errors import DatapathError
from nodemesh.ebpf.proxy_follow import (
    PodPaths,
    ProxyFollower,
    ProxyPod,
    warn_without_migrate_req,
)
from nodemesh.model.snapshot import MeshModel

log = structlog.get_logger("nodemesh.ebpf.agent")

APPLIES = Counter(
    "nodemesh_datapath_applies", "Datapath plans applied to the pinned maps", ["result"]
)
MAP_OPS = Counter("nodemesh_datapath_map_ops", "Map writes and deletes by the applier", ["op"])
FRONTENDS = Gauge("nodemesh_datapath_frontends", "Service frontends in the applied plan")
REDIRECTS = Gauge("nodemesh_datapath_l7_redirects", "L7 redirects in the applied plan")
UNRESOLVED = Gauge(
    "nodemesh_datapath_unresolved_clients", "Client pods of L7 redirects with no cgroup here"
)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """`proxy_pod`: follow the node Envoy pod's cgroup from the model (used
    when `config.proxy_cgroup` is not fixed)."""

    config: loader.DatapathConfig
    proxy_address: str | None
    node_name: str = ""
    proxy_pod: ProxyPod | None = None


# Waits until the node Envoy has ACKed the given model version.
ProxySynced = Callable[[str], Awaitable[None]]


class DatapathAgent:
    """`proxy_synced`, when given, orders each model against the node Envoy:
    frontends, backends and removals first, new redirects only after Envoy
    has ACKed the version (see `applier.apply(hold_new_redirects=True)`)."""

    def __init__(
        self, settings: AgentSettings, pods: PodCgroups, proxy_synced: ProxySynced | None = None
    ) -> None:
        self.settings = settings
        self.pods = pods
        # A fixed --proxy-cgroup wins; otherwise the Envoy pod is followed.
        selector = settings.proxy_pod
        self.proxy: ProxyFollower | None = None
        if selector is not None and settings.config.proxy_cgroup is None:
            if not isinstance(pods, PodPaths):
                raise DatapathError(
                    f"{type(pods).__name__} names no pod cgroup directories: "
                    "the Envoy pod cannot be followed (give a fixed proxy cgroup)"
                )
            self.proxy = ProxyFollower(selector, settings.node_name, pods, settings.config)
        self.proxy_synced = proxy_synced
        self.applied_version: str | None = None
        self._planned: tuple[MeshModel, pb.DatapathPlan] | None = None

    def start(self) -> loader.LoadReport:
        """Load or re-adopt the pinned datapath; raises `DatapathError` if it cannot."""
        if self.proxy is not None:
            warn_without_migrate_req()
        return loader.load(self.settings.config)

    def _apply(self, plan: pb.DatapathPlan, hold: bool = False) -> applier.ApplyResult:
        cfg = self.settings
        return applier.apply(plan, cfg.config.maps_dir, cfg.proxy_address, self.pods, hold)

    def apply_model(self, model: MeshModel) -> applier.ApplyResult:
        """Plan and apply `model` in one step (no ordering against Envoy)."""
        return self._record(model, self._plan(model))

    def stage(self, model: MeshModel) -> applier.ApplyResult:
        """First step of an update ordered against the node Envoy: frontends,
        backends and removed redirects, while new redirects are held back.
        Run it before the node Envoy is sent `model`."""
        plan = self._plan(model)
        return self._apply(plan, hold=True)

    def commit(self, model: MeshModel) -> applier.ApplyResult:
        """Second step: the whole plan. Run it once Envoy has ACKed `model`."""
        return self._record(model, self._plan(model))

    def _plan(self, model: MeshModel) -> pb.DatapathPlan:
        # stage() and commit() of one version share one plan.
        if self._planned is None or self._planned[0] is not model:
            self.pods.observe(model.pods)
            # Before any redirect of this version: a new Envoy pod is known
            # to the kernel before anything could steer it to itself.
            if self.proxy is not None:
                self.proxy.follow(model.pods)
            self._planned = (model, planner.plan(model, self.settings.node_name))
        return self._planned[1]

    async def apply_model_ordered(self, model: MeshModel) -> applier.ApplyResult:
        """Apply `model` in two steps around `proxy_synced` (one step without it)."""
        if self.proxy_synced is not None:
            self.stage(model)
            await self.proxy_synced(model.version)
        return self.commit(model)

    def _record(self, model: MeshModel, plan: pb.DatapathPlan) -> applier.ApplyResult:
        result = self._apply(plan)
        self.applied_version = model.version
        APPLIES.labels(result="ok").inc()
        MAP_OPS.labels(op="write").inc(result.writes)
        MAP_OPS.labels(op="delete").inc(result.deletes)
        FRONTENDS.set(len(plan.frontends))
        REDIRECTS.set(len(plan.redirects))
        UNRESOLVED.set(len(result.unresolved_clients))
        return result

    async def run(self, models: AsyncIterator[MeshModel]) -> None:
        async for model in models:
            try:
                await self.apply_model_ordered(model)
            except DatapathError as exc:
                APPLIES.labels(result="error").inc()
                log.error(
                    "model not applied; the previous plan stays",
                    model_version=model.version,
                    applied_version=self.applied_version,
                    error=str(exc),
                )
