"""Status says what the client holds (issue 10, items 14 and 15): a client
that reconnects holding the current versions is SYNCED at once, and a NACK
the client has moved past is no longer listed."""

from __future__ import annotations

from nodemesh.xds.cache import CLUSTER
from nodemesh.xds.server import ClientResourceStatus, ConfigStatus, TypeStatus
from tests.xds.server.ads_harness import Harness, mesh, names_of, wait_until


def _serve(harness: Harness, clusters: tuple[str, ...], label: str) -> None:
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(mesh(clusters), label))


def _cds(harness: Harness) -> TypeStatus:
    clients = harness.server.clients()
    assert len(clients) == 1
    found: TypeStatus = clients[0].types[CLUSTER]
    return found


async def _wildcard_cds(client, api: str) -> None:  # type: ignore[no-untyped-def]
    await (client.request(CLUSTER) if api == "sotw" else client.request(CLUSTER, subscribe=["*"]))


async def test_reconnect_holding_current_versions_is_synced(harness: Harness, api: str) -> None:
    """Envoy reconnecting (or the control plane restarting) with the current
    versions: SYNCED, not STALE until the next push."""
    _serve(harness, ("a", "b"), "v1")
    first = await harness.client(api)
    await _wildcard_cds(first, api)
    resp = await first.recv()
    await first.ack(resp)
    await wait_until(lambda: _cds(harness).status is ConfigStatus.SYNCED, what="first sync")
    await first.close()
    await wait_until(lambda: harness.server.clients() == [], what="first stream gone")

    again = await harness.client(api)
    if api == "sotw":
        await again.request(CLUSTER, version=resp.version_info)
    else:
        held = {r.name: r.version for r in resp.resources}
        await again.request(CLUSTER, subscribe=["*"], initial=held)
    await wait_until(lambda: _cds(harness).status is ConfigStatus.SYNCED, what="SYNCED on resume")
    cds = _cds(harness)
    assert [r.name for r in cds.resources] == ["a", "b"]
    assert all(r.status is ConfigStatus.SYNCED for r in cds.resources)
    assert all(r.client_status is ClientResourceStatus.ACKED for r in cds.resources)
    assert cds.last_acked_version  # the version column is not blank either
    await again.close()


async def test_reconnect_holding_old_versions_is_stale_until_acked(harness: Harness) -> None:
    """The negative case: a delta client holding other versions is sent the
    current ones and is STALE until it ACKs them."""
    _serve(harness, ("a", "b"), "v1")
    client = await harness.delta()
    await client.request(CLUSTER, subscribe=["*"], initial={"a": "old", "b": "old"})
    resp = await client.recv()
    assert names_of(resp) == ["a", "b"]
    await wait_until(lambda: _cds(harness).pending, what="response pending")
    assert _cds(harness).status is ConfigStatus.STALE
    await client.ack(resp)
    await wait_until(lambda: _cds(harness).status is ConfigStatus.SYNCED, what="SYNCED after ACK")
    await client.close()


async def test_resolved_nack_is_no_longer_listed(harness: Harness, api: str) -> None:
    _serve(harness, ("a", "b"), "v1")
    client = await harness.client(api)
    await _wildcard_cds(client, api)
    good = await client.recv()
    await client.ack(good)
    _serve(harness, ("a", "bad"), "v2")
    bad = await client.recv()
    if api == "sotw":
        await client.nack(bad, good.version_info, "cluster bad: rejected")
    else:
        await client.nack(bad, "cluster bad: rejected")
    await wait_until(lambda: _cds(harness).status is ConfigStatus.ERROR, what="NACK recorded")
    assert _cds(harness).last_nack_error == "cluster bad: rejected"

    _serve(harness, ("a", "fixed"), "v3")
    # ACK everything sent now: a held removal may follow in a later response.
    while _cds(harness).status is not ConfigStatus.SYNCED:
        try:
            await client.ack(await client.recv(timeout=0.5))
        except TimeoutError:
            continue
    cds = _cds(harness)
    assert cds.last_nack_error is None and cds.last_nack_version is None
    await client.close()


async def test_unresolved_nack_stays_listed_past_unrelated_acks(harness: Harness) -> None:
    """Delta: an ACK of a later response that does not replace the rejected
    resource does not clear the NACK (Envoy still lacks that resource)."""
    _serve(harness, ("a",), "v1")
    client = await harness.delta()
    await client.request(CLUSTER, subscribe=["*"])
    await client.ack(await client.recv())
    _serve(harness, ("a", "bad"), "v2")
    bad = await client.recv()
    await client.nack(bad, "cluster bad: rejected")
    await wait_until(lambda: _cds(harness).status is ConfigStatus.ERROR, what="NACK recorded")
    _serve(harness, ("a", "bad", "c"), "v3")  # adds c, keeps the rejected bad
    later = await client.recv()
    assert names_of(later) == ["c"]
    await client.ack(later)
    await wait_until(lambda: not _cds(harness).pending, what="ACK recorded")
    cds = _cds(harness)
    assert cds.status is ConfigStatus.ERROR
    assert cds.last_nack_error == "cluster bad: rejected"
    await client.close()
