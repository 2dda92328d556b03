"""The node agent in one process: its node's xDS server and the eBPF datapath,
both following the same model versions.

Ordering across the two outputs, per model version (make before break):

1. the kernel first drops redirects the new version no longer has (and takes
   the new frontends and backends), while redirects that need a listener
   Envoy does not have yet are held back;
2. the xDS snapshot is published to the node-local Envoy;
3. the agent waits (bounded by `envoy_sync_timeout`) until that Envoy has
   ACKed the version;
4. the kernel gets the full plan, so new redirects start steering only to
   listeners Envoy already serves.

If Envoy does not ACK in time, step 4 happens anyway and readiness says so:
an HTTP policy is a security rule, and leaving its connections unsteered
would bypass it (fail closed, as Cilium does when its proxy is missing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.controlplane import ControlPlane, ControlPlaneConfig
from nodemesh.ebpf import applier, loader, planner
from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.ebpf.errors import DatapathError
from nodemesh.model.snapshot import MeshModel

log = structlog.get_logger("nodemesh.agent")

DEFAULT_XDS_SOCKET = Path("/var/run/nodemesh/xds.sock")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """`node_name` plans this node's client pods; `envoy_node_id` is the id the
    node-local Envoy announces (the DaemonSet passes the node name to both)."""

    control_plane: ControlPlaneConfig
    datapath: loader.DatapathConfig
    node_name: str
    envoy_node_id: str
    proxy_address: str | None
    pod_cgroups: Path
    envoy_sync_timeout: float = 5.0


def _redirect_key(redirect: pb.L7Redirect) -> tuple[str, int, str]:
    return (redirect.name, redirect.proxy_port, redirect.listener)


def held_back(plan: pb.DatapathPlan, applied: pb.DatapathPlan | None) -> pb.DatapathPlan:
    """`plan` without the redirects that point at a listener the previous plan
    did not (Envoy may not serve it yet); where the previous plan had an
    entry of the same name, that entry stays meanwhile."""
    before = {r.name: r for r in applied.redirects} if applied is not None else {}
    known = {_redirect_key(r) for r in before.values()}
    staged = pb.DatapathPlan()
    staged.CopyFrom(plan)
    del staged.redirects[:]
    for redirect in plan.redirects:
        if _redirect_key(redirect) in known:
            staged.redirects.append(redirect)
        elif redirect.name in before:
            staged.redirects.append(before[redirect.name])
    return staged


@dataclass
class DatapathFollower:
    """Keeps the pinned maps in step with the models the control plane serves."""

    config: AgentConfig
    applied: pb.DatapathPlan | None = None
    applied_version: str | None = None
    last_error: str | None = None
    envoy_lagging: bool = False
    _pods: DirectoryPodCgroups = field(init=False)

    def __post_init__(self) -> None:
        self._pods = DirectoryPodCgroups(self.config.pod_cgroups)

    def _apply(self, plan: pb.DatapathPlan) -> None:
        try:
            applier.apply(
                plan, self.config.datapath.maps_dir, self.config.proxy_address, self._pods
            )
        except DatapathError as exc:
            # The maps keep the previous plan (the applier refuses before the
            # first write); xDS keeps flowing, readiness and status say why.
            self.last_error = f"model {plan.model_version}: {exc}"
            log.error("datapath_not_applied", model_version=plan.model_version, error=str(exc))
            return
        self.applied, self.applied_version, self.last_error = plan, plan.model_version, None

    async def before_publish(self, model: MeshModel) -> None:
        plan = planner.plan(model, self.config.node_name)
        staged = held_back(plan, self.applied)
        if staged != self.applied:
            await asyncio.to_thread(self._apply, staged)

    async def after_publish(self, model: MeshModel, plane: ControlPlane) -> None:
        plan = planner.plan(model, self.config.node_name)
        if plan == self.applied:
            return
        try:
            await plane.wait_synced(self.config.envoy_node_id, self.config.envoy_sync_timeout)
            self.envoy_lagging = False
        except TimeoutError:
            self.envoy_lagging = True
            log.warning(
                "envoy_not_synced_steering_anyway",
                envoy_node_id=self.config.envoy_node_id,
                model_version=model.version,
                timeout=self.config.envoy_sync_timeout,
            )
        await asyncio.to_thread(self._apply, plan)

    def status(self) -> Mapping[str, Any]:
        return {
            "applied_model_version": self.applied_version,
            "frontends": len(self.applied.frontends) if self.applied else 0,
            "redirects": len(self.applied.redirects) if self.applied else 0,
            "error": self.last_error,
            "envoy_lagging": self.envoy_lagging,
        }

    def not_ready_reasons(self) -> list[str]:
        reasons = []
        if self.last_error:
            reasons.append(f"datapath: {self.last_error}")
        if self.envoy_lagging:
            reasons.append(
                f"datapath: Envoy {self.config.envoy_node_id!r} had not ACKed the "
                "model when its redirects were programmed"
            )
        return reasons


async def run_agent(config: AgentConfig) -> None:
    """Load the datapath (reusing what is pinned), then serve until cancelled.
    The datapath stays pinned and live when the agent stops."""
    await asyncio.to_thread(loader.load, config.datapath)
    follower = DatapathFollower(config)
    plane = ControlPlane(config.control_plane, follower=follower)
    await plane.run()
