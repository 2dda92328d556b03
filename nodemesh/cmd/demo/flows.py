"""The demo's flows: it runs without a node agent, so it serves the agent's
ALS receiver and Observer itself, and ends by showing the canary's last L7
flows and the split counted from them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from nodemesh._gen.nodemesh.v1 import flow_pb2
from nodemesh.flows import text
from nodemesh.flows.collector import CollectorOptions, FlowCollector
from nodemesh.flows.service import FlowServer, FlowServerSettings
from nodemesh.model.snapshot import MeshModel


class DemoFlows:
    """The flow collector and server of the demo's one node."""

    def __init__(self, workdir: Path, node: str, model: Callable[[], MeshModel | None]) -> None:
        self.als_socket = workdir / "als.sock"
        self.collector = FlowCollector(CollectorOptions(node_name=node), model)
        # Observer on a free loopback port: `nodemesh observe --server` can read it.
        self.server = FlowServer(
            self.collector,
            FlowServerSettings(als_socket=self.als_socket, observer_address="127.0.0.1:0"),
        )

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def l7(self, host_cluster_prefix: str = "") -> list[flow_pb2.Flow]:
        return [
            f
            for f in self.collector.ring.recent()
            if f.Type == flow_pb2.L7 and f.l7.upstream_cluster.startswith(host_cluster_prefix)
        ]

    def report(self, last: int = 8) -> str:
        """The last L7 flows as `nodemesh observe` shows them, and the split
        the flows held show, by the cluster Envoy chose."""
        flows = self.l7()
        by_cluster = Counter(f.l7.upstream_cluster for f in flows)
        total = sum(by_cluster.values())
        split = "  ".join(
            f"{cluster} {n} ({n / total:.1%})" for cluster, n in sorted(by_cluster.items())
        )
        status = self.collector
        return (
            f"last {min(last, len(flows))} of {len(flows)} L7 flows held "
            f"(nodemesh observe --server {self.server.observer_target} --last {last}):\n"
            + text.table(flows[-last:])
            + f"\n\nsplit in the flows held: {split or 'none'}"
            + f"\nflows seen {status.ring.seen}, malformed access logs "
            + f"{status.malformed_access_logs}"
        )
