"""The node agent in one process: its node's xDS server and the eBPF datapath,
both following the same model versions.

The control plane publishes each model to the node Envoy; the datapath
follower (`nodemesh.node.datapath`, the one ordering implementation) runs its
kernel steps before and after that publish, waiting on the control plane's
ACK signal in between.
"""

from __future__ import annotations

from nodemesh.node.datapath import DatapathAgent, DatapathFollower
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig


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
        self.follower = DatapathFollower(
            datapath, envoy_node_id, envoy_sync_timeout=envoy_sync_timeout
        )
        self.plane = ControlPlane(control_plane, follower=self.follower)
        self.follower.envoy_synced = self.plane.wait_synced
        self.follower.envoy_listeners = self.plane.envoy_listeners

    async def run(self) -> None:
        await self.plane.run()
