"""The datapath half of the node agent: each model version into the kernel,
ordered against the node Envoy (make before break).

`DatapathAgent` plans a model and applies it to the pinned maps: `start()`
loads (or re-adopts) the pinned datapath, `stage()` and `commit()` are the
two halves of an ordered update, and `apply_model()` does both at once.

`DatapathFollower` is the one implementation of the ordering, per model
version:

1. `before_publish`: the kernel drops redirects the new version no longer
   has (and takes the new frontends and backends), while redirects that need
   a listener Envoy does not have yet are held back;
2. the caller publishes the xDS snapshot to the node-local Envoy;
3. `after_publish` waits (bounded by `envoy_sync_timeout`) until that Envoy
   has ACKed the version, or has answered it with a NACK (then it stops
   waiting at once: the rejection is final for this version), then
4. gives the kernel the full plan, so new redirects start steering only to
   listeners Envoy already serves.

If Envoy does not ACK in time, step 4 happens anyway and readiness says so:
an HTTP policy is a security rule, and leaving its connections unsteered
would bypass it (fail closed, as Cilium does when its proxy is missing).
One exception keeps traffic served: a redirect that moves to a listener
Envoy does not hold (it NACKed it, or has not ACKed it yet) keeps its
previous target while Envoy still holds the previous listener (the xDS
server keeps it until its replacement is ACKed; docs/datapath.md,
"Held-back redirects"). A redirect with no previous target is steered
anyway (fail closed).
A plan that fails to apply leaves the previous one in place and is retried
with the next model; the failure is logged and counted, never raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import Counter, Gauge

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import (
    applier,
    events,
    loader,
    planner,
    policy_apply,
    policy_incremental,
    policy_plan,
)
from nodemesh.ebpf.endpoints import PodCgroups
from nodemesh.ebpf.errors import DatapathError
from nodemesh.ebpf.policy_metrics import COLLECTOR
from nodemesh.model.snapshot import MeshModel
from nodemesh.node.envoy_sync import EnvoyRejected
from nodemesh.node.proxy_follow import (
    PodPaths,
    ProxyFollower,
    ProxyPod,
    warn_without_migrate_req,
)

log = structlog.get_logger("nodemesh.node.datapath")

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
    # This node's own addresses (identity `host` for policy); the proxy
    # address is always one.
    host_ips: tuple[str, ...] = ()
    # Report allowed policy verdicts in the event ring too (denied always are).
    policy_events_allowed: bool = False
    # Service translation, L7 steering and refusal events; one translation
    # or steering in `service_events_sample_every` (refusals: all).
    service_events: bool = True
    service_events_sample_every: int = 1


# Waits until Envoy `node_id` has ACKed the published model; raises
# `EnvoyRejected` as soon as it has answered every response of that model
# and NACKed some, or TimeoutError after `timeout` seconds
# (`ControlPlane.wait_synced`).
EnvoySynced = Callable[[str, float], Awaitable[None]]

# Names of the listeners Envoy `node_id` holds (has ACKed some version of),
# None when it is not connected (`ControlPlane.envoy_listeners`).
EnvoyListeners = Callable[[str], AbstractSet[str] | None]


class DatapathAgent:
    """Plans and applies models; `DatapathFollower` orders the two steps."""

    def __init__(self, settings: AgentSettings, pods: PodCgroups) -> None:
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
        self.applied_version: str | None = None
        # Redirects (by name) the last commit left on their previous target
        # because Envoy does not hold the new listener, with that listener.
        self.kept_redirects: dict[str, str] = {}
        self._planned: tuple[MeshModel, pb.DatapathPlan] | None = None
        self._committed: pb.DatapathPlan | None = None
        self.policy: policy_plan.PolicyPlan | None = None  # the last one applied
        self._policy_plan: policy_plan.PolicyPlan | None = None
        # Keeps the previous compile: a one-pod change costs that pod.
        self._policy_compiler = policy_incremental.Compiler()

    def start(self) -> loader.LoadReport:
        """Load or re-adopt the pinned datapath; raises `DatapathError` if it cannot."""
        if self.proxy is not None:
            warn_without_migrate_req()
        report = loader.load(self.settings.config)
        cfg = self.settings
        policy_apply.set_events_allowed(cfg.config.maps_dir, cfg.policy_events_allowed)
        events.set_service_events(
            cfg.config.maps_dir, cfg.service_events, cfg.service_events_sample_every
        )
        return report

    def _apply(self, plan: pb.DatapathPlan, hold: bool = False) -> applier.ApplyResult:
        cfg = self.settings
        # Policy first: a Service's new backends must meet the policy that
        # judges them (a toServices rule), not a moment of the old one.
        if self._policy_plan is not None:
            policy_apply.apply(self._policy_plan, cfg.config.maps_dir, self.pods)
            self.policy = self._policy_plan
            COLLECTOR.attach(cfg.config.maps_dir, self.policy.policy_names)
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

    def commit(
        self, model: MeshModel, served: AbstractSet[str] | None = None
    ) -> applier.ApplyResult:
        """Second step: the whole plan. Run it once Envoy has ACKed `model`.
        `served`: the listeners Envoy holds; a redirect whose new listener is
        not among them keeps its previous target if that one is."""
        plan = self._plan(model)
        if served is not None:
            plan = self._keep_served(plan, served)
        return self._record(model, plan)

    def _keep_served(self, plan: pb.DatapathPlan, served: AbstractSet[str]) -> pb.DatapathPlan:
        """`plan` with each redirect whose listener Envoy does not hold
        replaced by the previously committed redirect of the same frontend,
        when Envoy still holds that one's listener (same port for the same
        listener name: proxy ports are allocated by listener name)."""
        previous = {r.frontend: r for r in self._committed.redirects} if self._committed else {}
        self.kept_redirects = {}
        redirects: list[pb.L7Redirect] = []
        for redirect in plan.redirects:
            old = previous.get(redirect.frontend)
            if redirect.listener not in served and old is not None and old.listener in served:
                self.kept_redirects[redirect.name] = redirect.listener
                log.warning(
                    "redirect_kept_on_previous_listener",
                    redirect=redirect.name,
                    listener=redirect.listener,
                    previous_listener=old.listener,
                    model_version=plan.model_version,
                )
                redirects.append(old)
            else:
                redirects.append(redirect)
        if not self.kept_redirects:
            return plan
        kept = pb.DatapathPlan()
        kept.CopyFrom(plan)
        del kept.redirects[:]
        kept.redirects.extend(redirects)
        return kept

    def _plan(self, model: MeshModel) -> pb.DatapathPlan:
        # stage() and commit() of one version share one plan.
        if self._planned is None or self._planned[0] is not model:
            self.pods.observe(model.pods)
            # Before any redirect of this version: a new Envoy pod is known
            # to the kernel before anything could steer it to itself.
            if self.proxy is not None:
                self.proxy.follow(model.pods)
            self._planned = (model, planner.plan(model, self.settings.node_name))
            self._policy_plan = self._plan_policy(model)
        return self._planned[1]

    def _plan_policy(self, model: MeshModel) -> policy_plan.PolicyPlan:
        cfg = self.settings
        hosts = (*cfg.host_ips, *([cfg.proxy_address] if cfg.proxy_address else []))
        exempt = proxy_pods(model, cfg.proxy_pod)
        return self._policy_compiler.plan(model, cfg.node_name, hosts, exempt)

    def _record(self, model: MeshModel, plan: pb.DatapathPlan) -> applier.ApplyResult:
        result = self._apply(plan)
        self.applied_version = model.version
        self._committed = plan
        MAP_OPS.labels(op="write").inc(result.writes)
        MAP_OPS.labels(op="delete").inc(result.deletes)
        FRONTENDS.set(len(plan.frontends))
        REDIRECTS.set(len(plan.redirects))
        UNRESOLVED.set(len(result.unresolved_clients))
        return result


@dataclass
class DatapathFollower:
    """Runs the datapath's two steps around each xDS publish (see the module
    docstring). Without `envoy_synced` (no xDS in this process) the second
    step follows the first at once."""

    datapath: DatapathAgent
    envoy_node_id: str = ""
    envoy_synced: EnvoySynced | None = None
    envoy_sync_timeout: float = 5.0
    envoy_listeners: EnvoyListeners | None = None
    last_error: str | None = None
    envoy_lagging: bool = False
    envoy_rejected: str | None = None  # the NACK of the model last followed
    _failed: bool = field(default=False, repr=False)

    async def _step(self, step: Callable[[MeshModel], object], model: MeshModel) -> None:
        try:
            await asyncio.to_thread(step, model)
        except DatapathError as exc:
            # The applier refuses before its first write: the kernel keeps the
            # previous plan; xDS keeps flowing; readiness and status say why.
            self._failed = True
            self.last_error = f"model {model.version}: {exc}"
            log.error("datapath_not_applied", model_version=model.version, error=str(exc))

    async def before_publish(self, model: MeshModel) -> None:
        self._failed = False
        await self._step(self.datapath.stage, model)

    async def after_publish(self, model: MeshModel) -> None:
        await self._wait_envoy(model)
        served = (
            self.envoy_listeners(self.envoy_node_id) if self.envoy_listeners is not None else None
        )
        await self._step(lambda m: self.datapath.commit(m, served), model)
        # One count per model version, whichever step refused it.
        APPLIES.labels(result="error" if self._failed else "ok").inc()
        if not self._failed:
            self.last_error = None

    async def _wait_envoy(self, model: MeshModel) -> None:
        """Until Envoy ACKed `model`, NACKed it, or the timeout passed. A
        NACK ends the wait at once: the commit that follows keeps each
        redirect whose new listener Envoy does not hold on its previous
        target (make before break, see `DatapathAgent.commit`)."""
        self.envoy_lagging, self.envoy_rejected = False, None
        if self.envoy_synced is None:
            return
        try:
            await self.envoy_synced(self.envoy_node_id, self.envoy_sync_timeout)
        except EnvoyRejected as exc:
            self.envoy_rejected = str(exc)
            log.warning(
                "envoy_rejected_model",
                envoy_node_id=self.envoy_node_id,
                model_version=model.version,
                error=str(exc),
            )
        except TimeoutError:
            self.envoy_lagging = True
            log.warning(
                "envoy_not_synced_steering_anyway",
                envoy_node_id=self.envoy_node_id,
                model_version=model.version,
                timeout=self.envoy_sync_timeout,
            )

    async def follow(self, models: AsyncIterator[MeshModel]) -> None:
        """Both steps for each model of a stream (a process with no xDS)."""
        async for model in models:
            await self.before_publish(model)
            await self.after_publish(model)

    def status(self) -> Mapping[str, Any]:
        return {
            "applied_model_version": self.datapath.applied_version,
            "error": self.last_error,
            "envoy_lagging": self.envoy_lagging,
            "envoy_rejected": self.envoy_rejected,
            "kept_redirects": dict(self.datapath.kept_redirects),
        }

    def not_ready_reasons(self) -> list[str]:
        reasons = []
        if self.last_error:
            reasons.append(f"datapath: {self.last_error}")
        if self.envoy_lagging:
            reasons.append(
                f"datapath: Envoy {self.envoy_node_id!r} had not ACKed the model "
                "when its redirects were programmed"
            )
        if self.envoy_rejected:
            reasons.append(
                f"datapath: Envoy {self.envoy_node_id!r} rejected the model: {self.envoy_rejected}"
            )
        for redirect, listener in sorted(self.datapath.kept_redirects.items()):
            reasons.append(
                f"datapath: {redirect} still steers to its previous listener: Envoy "
                f"{self.envoy_node_id!r} does not hold listener {listener!r} (NACKed or not ACKed)"
            )
        return reasons


def proxy_pods(model: MeshModel, selector: ProxyPod | None) -> list[str]:
    """The node Envoy's pods: never policy endpoints (the proxy is not policed;
    the connections it carries were judged at the client's connect())."""
    if selector is None:
        return []
    wanted = dict(selector.labels)
    return [
        f"{p.ref.namespace}/{p.ref.name}"
        for p in model.pods
        if p.ref.namespace == selector.namespace
        and all(dict(p.labels).get(k) == v for k, v in wanted.items())
    ]
