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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from nodemesh.controlplane import ControlPlane, ControlPlaneConfig
from nodemesh.ebpf.agent import DatapathAgent
from nodemesh.ebpf.errors import DatapathError
from nodemesh.model.snapshot import MeshModel

log = structlog.get_logger("nodemesh.agent")


@dataclass
class DatapathFollower:
    """Runs the datapath's two steps around each xDS publish (see above)."""

    datapath: DatapathAgent
    envoy_node_id: str
    envoy_sync_timeout: float = 5.0
    last_error: str | None = None
    envoy_lagging: bool = False

    async def _step(self, step: Callable[[MeshModel], object], model: MeshModel) -> None:
        try:
            await asyncio.to_thread(step, model)
        except DatapathError as exc:
            # The applier refuses before its first write: the kernel keeps the
            # previous plan; xDS keeps flowing; readiness and status say why.
            self.last_error = f"model {model.version}: {exc}"
            log.error("datapath_not_applied", model_version=model.version, error=str(exc))
        else:
            self.last_error = None

    async def before_publish(self, model: MeshModel) -> None:
        await self._step(self.datapath.stage, model)

    async def after_publish(self, model: MeshModel, plane: ControlPlane) -> None:
        try:
            await plane.wait_synced(self.envoy_node_id, self.envoy_sync_timeout)
            self.envoy_lagging = False
        except TimeoutError:
            self.envoy_lagging = True
            log.warning(
                "envoy_not_synced_steering_anyway",
                envoy_node_id=self.envoy_node_id,
                model_version=model.version,
                timeout=self.envoy_sync_timeout,
            )
        await self._step(self.datapath.commit, model)

    def status(self) -> Mapping[str, Any]:
        return {
            "applied_model_version": self.datapath.applied_version,
            "error": self.last_error,
            "envoy_lagging": self.envoy_lagging,
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
        return reasons


class NodeAgent:
    """The control plane for this node's Envoy, with the datapath following it.
    Call `datapath.start()` first (it loads or re-adopts the pinned programs);
    the datapath stays pinned and live when the agent stops."""

    def __init__(
        self,
        control_plane: ControlPlaneConfig,
        datapath: DatapathAgent,
        envoy_node_id: str,
        envoy_sync_timeout: float = 5.0,
    ) -> None:
        self.follower = DatapathFollower(datapath, envoy_node_id, envoy_sync_timeout)
        self.plane = ControlPlane(control_plane, follower=self.follower)

    async def run(self) -> None:
        await self.plane.run()
