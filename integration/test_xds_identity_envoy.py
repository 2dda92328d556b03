"""The real Envoy over mTLS against the xDS server with node identity bound
to client certificates: an Envoy whose certificate names its node id is
served; one claiming another node's id is refused and gets nothing. And one
Envoy's NACK changes nothing another node is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import duration_pb2
from prometheus_client import REGISTRY

from integration.local_mesh import free_port
from nodemesh.node.envoy_process import EnvoyProcess, render_bootstrap
from nodemesh.xds.cache import CLUSTER, SnapshotCache
from nodemesh.xds.server import AdsServer, ServerSettings, StreamSettings, TlsSettings
from nodemesh.xds.server.identity import NodeIdentityRule
from nodemesh.xds.server.status import ConfigStatus
from tests.support.pki import Issued, Pki
from tests.support.polling import wait_until_async
from tests.xds.server.ads_harness import SotwClient, cluster, mesh, names_of

pytestmark = pytest.mark.envoy

SPIFFE = "spiffe://mesh.test/nodemesh/node/{node}"


def spiffe(node: str) -> tuple[str]:
    return (f"spiffe://mesh.test/nodemesh/node/{node}",)


def _refused_total() -> float:
    """The module-level counter on the default registry (shared by every
    test in the process: callers compare before and after)."""
    value = REGISTRY.get_sample_value("nodemesh_xds_identity_refused_total", {"reason": "mismatch"})
    return float(value or 0.0)


class Rig:
    def __init__(self, server: AdsServer, cache: SnapshotCache, pki: Pki) -> None:
        self.server, self.cache, self.pki = server, cache, pki
        self._refused_before = _refused_total()

    def bootstrap(self, client: Issued) -> dict[str, Any]:
        """The shipped bootstrap over TCP, with mTLS to the xDS server."""
        assert self.server.tcp_port is not None
        config = render_bootstrap(xds_tcp=("127.0.0.1", self.server.tcp_port))
        xds = config["static_resources"]["clusters"][0]
        xds["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                "UpstreamTlsContext",
                "sni": "localhost",
                "common_tls_context": {
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": str(client.cert)},
                            "private_key": {"filename": str(client.key)},
                        }
                    ],
                    "validation_context": {
                        "trusted_ca": {"filename": str(self.pki.ca)},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": "localhost"}}
                        ],
                    },
                },
            },
        }
        return config

    def synced(self, node_id: str) -> bool:
        return any(
            c.node_id == node_id
            and c.types
            and all(t.status is ConfigStatus.SYNCED for t in c.types.values())
            for c in self.server.clients()
        )

    def refused(self) -> float:
        """Mismatch refusals since this rig started."""
        return _refused_total() - self._refused_before


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    pki = Pki(tmp_path / "pki")
    served = pki.issue("server", server=True)
    cache = SnapshotCache()
    cache.set_default_snapshot(cache.build_snapshot(mesh(port=free_port()), "v1"))
    settings = ServerSettings(
        tcp_address="127.0.0.1:0",
        tls=TlsSettings(served.cert, served.key, pki.ca, require_client_cert=True),
        stream=StreamSettings(coalesce_delay=0.02, node_identity=NodeIdentityRule((SPIFFE,))),
    )
    server = AdsServer(cache, settings)
    await server.start()
    try:
        yield Rig(server, cache, pki)
    finally:
        await server.stop(1.0)


@asynccontextmanager
async def envoy(rig: Rig, workdir: Path, node_id: str, cert: Issued) -> AsyncIterator[EnvoyProcess]:
    process = EnvoyProcess(workdir, rig.bootstrap(cert), node_id)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


async def test_envoy_is_served_only_as_the_node_its_certificate_names(
    rig: Rig, tmp_path: Path
) -> None:
    node_a = rig.pki.issue("node-a", uris=spiffe("node-a"))
    async with envoy(rig, tmp_path / "a", "node-a", node_a):
        await wait_until_async(lambda: rig.synced("node-a"), what="node-a synced over mTLS")
    # node-a's certificate, node-b's id: refused before anything is sent.
    async with envoy(rig, tmp_path / "b", "node-b", node_a) as impostor:
        await wait_until_async(lambda: rig.refused() >= 1, what="the impostor refused")
        stats = await impostor.stats("cluster_manager.cds.update_success")
        assert stats.get("cluster_manager.cds.update_success", 0) == 0
    assert not any(c.node_id == "node-b" for c in rig.server.clients())


async def test_one_envoys_nack_changes_nothing_another_node_is_sent(
    rig: Rig, tmp_path: Path
) -> None:
    # A cluster Envoy refuses (negative timeout); a gRPC client takes anything.
    bad = mesh(port=free_port())
    broken = cluster("broken", eds=False)
    broken.connect_timeout.CopyFrom(duration_pb2.Duration(seconds=-1))
    bad[CLUSTER]["broken"] = broken
    rig.cache.set_default_snapshot(rig.cache.build_snapshot(bad, "v2"))
    other = rig.pki.issue("node-c", uris=spiffe("node-c"))
    creds = grpc.ssl_channel_credentials(
        rig.pki.ca.read_bytes(), other.key.read_bytes(), other.cert.read_bytes()
    )
    async with grpc.aio.secure_channel(f"localhost:{rig.server.tcp_port}", creds) as channel:
        client = await SotwClient(channel, "node-c").open()
        await client.request(CLUSTER)
        before = await client.recv()
        await client.ack(before)
        node_a = rig.pki.issue("node-a", uris=spiffe("node-a"))
        async with envoy(rig, tmp_path / "a", "node-a", node_a) as proxy:
            await wait_until_async(lambda: _nacked(rig, "node-a"), what="node-a NACKed CDS")
            # The other node is still SYNCED on the same version, and nothing
            # was resent to it because of the NACK.
            assert rig.synced("node-c")
            assert client.queue.empty()
            # The next good version reaches both, and the Envoy takes it.
            rig.cache.set_default_snapshot(rig.cache.build_snapshot(mesh(port=free_port()), "v3"))
            after = await client.recv()
            await client.ack(after)
            try:
                await wait_until_async(lambda: rig.synced("node-a"), what="node-a back in sync")
            except AssertionError as exc:
                raise AssertionError(_statuses(rig) + proxy.log_tail(40)) from exc
        await client.close()
    assert "broken" in names_of(before) and "broken" not in names_of(after)
    assert isinstance(broken, cluster_pb2.Cluster)


def _nacked(rig: Rig, node_id: str) -> bool:
    for client in rig.server.clients():
        if client.node_id == node_id and CLUSTER in client.types:
            return client.types[CLUSTER].last_nack_error is not None
    return False


def _statuses(rig: Rig) -> str:
    return "; ".join(
        f"{c.node_id}: "
        + ", ".join(
            f"{t.short_name}={[(r.name, r.status.value) for r in t.resources]}"
            for t in c.types.values()
        )
        for c in rig.server.clients()
    )
