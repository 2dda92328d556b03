"""The datapath half of the node agent: each model version into the kernel.

`DatapathAgent` is the seam the node agent's wiring uses: `start()` loads (or
re-adopts) the pinned datapath, `apply_model()` plans one model and applies
it, and `run()` follows a stream of models (e.g. `MeshStore.updates()`). A
plan that fails to apply leaves the previous one in place and is retried
with the next model; the failure is logged and counted, never raised into the
stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Gauge

from nodemesh.ebpf import applier, loader, planner
from nodemesh.ebpf.endpoints import PodCgroups
from nodemesh.ebpf.errors import DatapathError
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
    config: loader.DatapathConfig
    proxy_address: str | None
    node_name: str = ""


class DatapathAgent:
    def __init__(self, settings: AgentSettings, pods: PodCgroups) -> None:
        self.settings = settings
        self.pods = pods
        self.applied_version: str | None = None

    def start(self) -> loader.LoadReport:
        """Load or re-adopt the pinned datapath; raises `DatapathError` if it cannot."""
        return loader.load(self.settings.config)

    def apply_model(self, model: MeshModel) -> applier.ApplyResult:
        plan = planner.plan(model, self.settings.node_name)
        result = applier.apply(
            plan, self.settings.config.maps_dir, self.settings.proxy_address, self.pods
        )
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
                self.apply_model(model)
            except DatapathError as exc:
                APPLIES.labels(result="error").inc()
                log.error(
                    "model not applied; the previous plan stays",
                    model_version=model.version,
                    applied_version=self.applied_version,
                    error=str(exc),
                )
