"""Node identity on the xDS port, with a real gRPC client over mTLS: the node
id a stream claims must be one its client certificate names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import structlog
from prometheus_client import REGISTRY

from nodemesh.xds.cache import CLUSTER, SnapshotCache
from nodemesh.xds.server import AdsServer, ServerSettings, StreamSettings, TlsSettings
from nodemesh.xds.server.identity import NodeIdentityRule
from tests.support.pki import Issued, Pki
from tests.xds.server.ads_harness import SotwClient, StreamClosed, mesh, names_of

SPIFFE = "spiffe://mesh.test/nodemesh/node/{node}"
DNS = "{node}.nodes.mesh.test"


def refused_total(reason: str) -> float:
    """nodemesh_xds_identity_refused_total{reason} on the default registry
    (module-level, shared by every test: compare before and after)."""
    value = REGISTRY.get_sample_value("nodemesh_xds_identity_refused_total", {"reason": reason})
    return value or 0.0


class Rig:
    def __init__(self, server: AdsServer, pki: Pki) -> None:
        self.server, self.pki = server, pki
        self._before = {r: refused_total(r) for r in ("mismatch", "no_usable_san")}

    def channel(self, client: Issued) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            self.pki.ca.read_bytes(), client.key.read_bytes(), client.cert.read_bytes()
        )
        return grpc.aio.secure_channel(f"localhost:{self.server.tcp_port}", creds)

    def refused(self, reason: str) -> float:
        """Refusals for `reason` since this rig started."""
        return refused_total(reason) - self._before[reason]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    pki = Pki(tmp_path / "pki")
    served = pki.issue("server", server=True)
    cache = SnapshotCache()
    cache.set_default_snapshot(cache.build_snapshot(mesh(), "v"))
    settings = ServerSettings(
        tcp_address="127.0.0.1:0",
        tls=TlsSettings(served.cert, served.key, pki.ca, require_client_cert=True),
        stream=StreamSettings(node_identity=NodeIdentityRule((SPIFFE,), (DNS,))),
    )
    server = AdsServer(cache, settings)
    await server.start()
    try:
        yield Rig(server, pki)
    finally:
        await server.stop(1.0)


async def fetch(channel: grpc.aio.Channel, node_id: str) -> list[str]:
    client = await SotwClient(channel, node_id).open()
    try:
        await client.request(CLUSTER)
        return names_of(await client.recv())
    finally:
        await client.close()


async def refusal(channel: grpc.aio.Channel, node_id: str) -> grpc.aio.AioRpcError:
    with pytest.raises(StreamClosed) as closed:
        await fetch(channel, node_id)
    assert closed.value.error is not None
    return closed.value.error


async def test_a_spiffe_or_dns_san_serves_its_own_node(rig: Rig) -> None:
    by_uri = rig.pki.issue("a", uris=("spiffe://mesh.test/nodemesh/node/node-a",))
    by_dns = rig.pki.issue("b", dns=("node-b.example.internal.nodes.mesh.test",))
    async with rig.channel(by_uri) as channel:
        assert await fetch(channel, "node-a") == ["a", "b"]
    async with rig.channel(by_dns) as channel:
        assert await fetch(channel, "node-b.example.internal") == ["a", "b"]


async def test_claiming_another_node_is_permission_denied_naming_both(rig: Rig) -> None:
    node_a = rig.pki.issue("a", uris=("spiffe://mesh.test/nodemesh/node/node-a",))
    with structlog.testing.capture_logs() as logs:
        async with rig.channel(node_a) as channel:
            error = await refusal(channel, "node-b")
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "'node-b'" in (error.details() or "") and "'node-a'" in (error.details() or "")
    assert rig.refused("mismatch") == 1
    [line] = [e for e in logs if e["event"] == "xds_identity_refused"]
    assert line["node_id"] == "node-b" and line["reason"] == "mismatch"


async def test_a_certificate_without_a_usable_san_says_what_is_accepted(rig: Rig) -> None:
    other_domain = rig.pki.issue("x", uris=("spiffe://elsewhere/nodemesh/node/node-a",))
    bare = rig.pki.issue("bare")
    for client in (other_domain, bare):
        async with rig.channel(client) as channel:
            error = await refusal(channel, "node-a")
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        details = error.details() or ""
        assert f"URI SAN {SPIFFE}" in details and f"DNS SAN {DNS}" in details, details
    assert rig.refused("no_usable_san") == 2


def test_a_pattern_must_name_the_node_once() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        NodeIdentityRule(("spiffe://mesh.test/nodemesh/node",))
    with pytest.raises(ValueError, match="at least one"):
        NodeIdentityRule((), ())
