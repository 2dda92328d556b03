"""Delta: a client rejects a response whole. Its innocent resources reach it
once the rejected response is no longer current (the culprit changed or went
away), and not before (they would be rejected again with it)."""

from __future__ import annotations

from nodemesh.xds.cache import CLUSTER
from tests.xds.server.ads_harness import Harness, cluster, mesh, names_of, publish


async def test_delta_resends_the_rest_of_a_rejected_response_once_its_culprit_goes(
    harness: Harness,
) -> None:
    bad = mesh(clusters=("a", "b"))
    bad[CLUSTER]["broken"] = cluster("broken", eds=False)
    publish(harness.cache, "node-1", bad, "bad")
    client = await harness.delta()
    await client.request(CLUSTER, subscribe=["*"])
    rejected = await client.recv()
    assert names_of(rejected) == ["a", "b", "broken"]
    await client.nack(rejected, "cluster broken: rejected by test")
    # Something else changes while the rejected response is still current:
    # nothing of it is sent again.
    still = mesh(clusters=("a", "b", "c"))
    still[CLUSTER]["broken"] = cluster("broken", eds=False)
    publish(harness.cache, "node-1", still, "still-bad")
    assert names_of(await client.recv()) == ["c"]
    # The culprit goes: a and b, which the client never took, are sent again.
    publish(harness.cache, "node-1", mesh(clusters=("a", "b", "c")), "fixed")
    fixed = await client.recv()
    assert names_of(fixed) == ["a", "b"] and list(fixed.removed_resources) == ["broken"]
    await client.close()
