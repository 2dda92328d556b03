"""The datapath half of the node agent: each model version into the kernel.

`DatapathAgent` is the seam the node agent's wiring uses: `start()` loads (or
re-adopts) the pinned datapath, `apply_model()` plans one model and applies
it, and `run()` follows a stream of models (e.g. `MeshStore.updates()`). A
plan that fails to apply leaves the previous one in place and is retried
with the next model; the failure is logged and counted, never raised into the
stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Gauge

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, loader, planner
from nodemesh.ebpf.endpoints import PodCgroups
from nodemesh.ebpf.errors import DatapathError
from nodemesh.model.objects import Pod
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
PROXY_RESOLVED = Gauge(
    "nodemesh_datapath_proxy_resolved",
    "1 while the node Envoy pod's cgroup is known to the kernel (its connects are never steered)",
)


@dataclass(frozen=True, slots=True)
class ProxyPod:
    """How the agent finds its node's Envoy pod in the model (the Envoy
    DaemonSet's namespace and pod labels)."""

    namespace: str
    labels: tuple[tuple[str, str], ...]

    def matches(self, pod: Pod) -> bool:
        have = dict(pod.labels)
        return pod.ref.namespace == self.namespace and all(have.get(k) == v for k, v in self.labels)

    def __str__(self) -> str:
        return f"{self.namespace}/{','.join(f'{k}={v}' for k, v in self.labels)}"


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
        self.proxy_synced = proxy_synced
        self.applied_version: str | None = None
        self._planned: tuple[MeshModel, pb.DatapathPlan] | None = None

    def start(self) -> loader.LoadReport:
        """Load or re-adopt the pinned datapath; raises `DatapathError` if it cannot."""
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
            self._follow_proxy(model.pods)
            self._planned = (model, planner.plan(model, self.settings.node_name))
        return self._planned[1]

    def _follow_proxy(self, pods: Iterable[Pod]) -> None:
        """Write the node Envoy pod's cgroup id to the kernel when it changes
        (an Envoy restart is a new pod: new UID, new cgroup)."""
        selector = self.settings.proxy_pod
        if selector is None or self.settings.config.proxy_cgroup is not None:
            return
        node = self.settings.node_name
        mine = [p for p in pods if selector.matches(p) and (not node or p.node_name == node)]
        # A running pod over a pending or terminating one; then by name, so
        # the choice is stable while two exist during a rollout.
        mine.sort(key=lambda p: (p.phase != "Running", p.ref.name))
        for pod in mine:
            cgroup = self.pods.cgroup_id(f"{pod.ref.namespace}/{pod.ref.name}")
            if cgroup is not None:
                if loader.set_proxy_cgroup(self.settings.config.maps_dir, cgroup):
                    log.info("node Envoy pod followed", pod=str(pod.ref), cgroup_id=cgroup)
                PROXY_RESOLVED.set(1)
                return
        PROXY_RESOLVED.set(0)
        log.warning(
            "the node Envoy pod has no cgroup on this node yet; the last one known stays",
            selector=str(selector),
            candidates=[str(p.ref) for p in mine],
        )

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
