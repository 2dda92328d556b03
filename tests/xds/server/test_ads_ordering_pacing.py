"""Leading-edge pacing of snapshot changes (StreamSettings.coalesce_delay).

The first change after a quiet window is pushed at once; changes within the
window that follows ride in one trailing round. The "at once" tests use a
window of an hour: were the push held for the window, `recv` would time out
(ads_harness.TIMEOUT) and the test fail. A change right after an ACK (the
ACK possibly still on the wire) is covered by test_ads_held_removal.py and
test_ads_ack_nack.py, which publish right after acking.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nodemesh.xds.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE
from nodemesh.xds.cache.resources import push_rank
from tests.xds.server.ads_harness import (
    MakeHarness,
    cluster,
    decode_resources,
    mesh,
    names_of,
    publish,
    settle,
)

AN_HOUR = 3600.0
EDS = ["a", "b"]


async def _subscribe_all(client: Any, api: str) -> None:
    if api == "sotw":
        await client.request(CLUSTER)
        await client.request(ENDPOINT, EDS)
        await client.request(LISTENER)
        await client.request(ROUTE, ["routes"])
    else:
        await client.request(CLUSTER, subscribe=["*"])
        await client.request(ENDPOINT, subscribe=EDS)
        await client.request(LISTENER, subscribe=["*"])
        await client.request(ROUTE, subscribe=["routes"])


async def _ack(client: Any, api: str, resp: Any) -> None:
    if api == "delta":
        await client.ack(resp)
        return
    names = EDS if resp.type_url == ENDPOINT else ["routes"] if resp.type_url == ROUTE else []
    await client.ack(resp, names)


def _version(step: int) -> dict[str, Any]:
    """Step `step` of a rollout: cluster a retuned, weights shifted to b."""
    resources = mesh(clusters=("a", "b"), weights={"a": 100 - step, "b": step})
    resources[CLUSTER]["a"] = cluster("a", timeout_s=step + 1)
    return resources


def _weight_of_b(resp: Any) -> int:
    vhost = decode_resources(resp)["routes"].virtual_hosts[0]
    clusters = vhost.routes[0].route.weighted_clusters.clusters
    return int(next(c.weight.value for c in clusters if c.name == "b"))


async def test_isolated_change_is_pushed_without_waiting_the_window(
    make_harness: MakeHarness, api: str
) -> None:
    harness = await make_harness(coalesce_delay=AN_HOUR)
    publish(harness.cache, "node-1", _version(1), "v1")
    client = await harness.client(api)
    await _subscribe_all(client, api)
    await settle(harness, client, types=4, eds=EDS)
    pushes = {t: harness.metric("nodemesh_xds_pushes_total", type=t) for t in ("CDS", "RDS")}
    publish(harness.cache, "node-1", _version(2), "v2")
    # One round, in make-before-break order, well inside the hour.
    cds = await client.recv()
    assert cds.type_url == CLUSTER
    assert decode_resources(cds)["a"].connect_timeout.seconds == 3
    await _ack(client, api, cds)
    eds = await client.recv()
    assert eds.type_url == ENDPOINT  # the updated cluster's endpoints, resent
    await _ack(client, api, eds)
    rds = await client.recv()
    assert rds.type_url == ROUTE
    assert _weight_of_b(rds) == 2
    await _ack(client, api, rds)
    assert harness.metric("nodemesh_xds_pushes_total", type="CDS") == pushes["CDS"] + 1
    assert harness.metric("nodemesh_xds_pushes_total", type="RDS") == pushes["RDS"] + 1
    await client.close()


async def test_burst_inside_the_window_is_two_rounds(make_harness: MakeHarness, api: str) -> None:
    """Ten changes, the sender free to run between them: the first goes out
    at once, the other nine as one trailing round with the latest state, and
    each round keeps the CDS, EDS, LDS, RDS order."""
    # Long enough for the burst below (ten short sleeps) on a loaded machine.
    harness = await make_harness(coalesce_delay=3.0)
    publish(harness.cache, "node-1", _version(0), "v0")
    client = await harness.client(api)
    await _subscribe_all(client, api)
    await settle(harness, client, types=4, eds=EDS)
    before = {t: harness.metric("nodemesh_xds_pushes_total", type=t) for t in ("CDS", "RDS")}
    for step in range(1, 11):
        publish(harness.cache, "node-1", _version(step), f"v{step}")
        # The sender may run: after the first change (leading edge) it reads
        # the snapshot before this sleep ends; after that only the window
        # holds it back.
        await asyncio.sleep(0.01)
    received: list[Any] = []
    while not (received and received[-1].type_url == ROUTE and _weight_of_b(received[-1]) == 10):
        received.append(await client.recv())
        await _ack(client, api, received[-1])
    types = [r.type_url for r in received]
    assert types == [CLUSTER, ENDPOINT, ROUTE, CLUSTER, ENDPOINT, ROUTE]
    ranks = [push_rank(t) for t in types]
    assert ranks[:3] == sorted(ranks[:3]) and ranks[3:] == sorted(ranks[3:])
    assert _weight_of_b(received[2]) == 1  # leading: the first change alone
    assert decode_resources(received[3])["a"].connect_timeout.seconds == 11  # latest wins
    for short in ("CDS", "RDS"):
        assert harness.metric("nodemesh_xds_pushes_total", type=short) == before[short] + 2
    await client.close()


async def test_held_removal_is_released_without_waiting_the_window(
    make_harness: MakeHarness, api: str
) -> None:
    """Make-before-break with a leading push: routes move from a to b at once;
    a is withdrawn as soon as the new routes are ACKed, not a window later."""
    harness = await make_harness(coalesce_delay=AN_HOUR)
    publish(harness.cache, "node-1", mesh(clusters=("a",), weights={"a": 100}), "v1")
    client = await harness.client(api)
    await _subscribe_all(client, api)
    await settle(harness, client, types=4, eds=EDS)
    publish(harness.cache, "node-1", mesh(clusters=("b",), weights={"b": 100}), "v2")
    cds = await client.recv()
    assert cds.type_url == CLUSTER
    assert "b" in names_of(cds)
    if api == "sotw":
        assert names_of(cds) == ["a", "b"]  # a is held
    else:
        assert list(cds.removed_resources) == []
    await _ack(client, api, cds)
    seen = [cds.type_url]
    while seen[-1] != ROUTE:
        resp = await client.recv()
        seen.append(resp.type_url)
        await _ack(client, api, resp)
    assert seen[0] == CLUSTER and seen[-1] == ROUTE
    final = await client.recv()
    assert final.type_url == CLUSTER
    if api == "sotw":
        assert names_of(final) == ["b"]
    else:
        assert list(final.removed_resources) == ["a"]
    await client.close()


async def test_a_change_waits_for_an_answer_at_most_one_window(
    make_harness: MakeHarness, api: str
) -> None:
    """A change waits for the client to answer its last response (an ACK on
    the wire must not cross the new one), but a client that never answers
    still gets the change, one window later."""
    harness = await make_harness(coalesce_delay=0.5)
    publish(harness.cache, "node-1", mesh(clusters=("a",)), "v1")
    client = await harness.client(api)
    await (client.request(CLUSTER) if api == "sotw" else client.request(CLUSTER, subscribe=["*"]))
    first = await client.recv()  # never ACKed
    publish(harness.cache, "node-1", mesh(clusters=("a", "z")), "v2")
    pushed = await client.recv()
    assert pushed.nonce != first.nonce
    assert "z" in names_of(pushed)
    assert harness.server.clients()[0].types[CLUSTER].pending  # still unanswered
    await client.close()
