"""The flow ring: bounded forever, loss to a slow follower counted exactly and
delivered in order."""

from __future__ import annotations

import asyncio

from nodemesh.flows.collector import CollectorOptions, FlowCollector
from nodemesh.flows.ring import FlowRing, Lost
from tests.support.flows import flow


def test_a_flood_keeps_the_newest_capacity_flows() -> None:
    ring = FlowRing(capacity=64)
    for n in range(1000):
        ring.add(flow(f"/{n}"))
    assert len(ring) == 64 and ring.seen == 1000
    assert [f.l7.http.url for f in ring.recent()] == [f"/{n}" for n in range(936, 1000)]


async def test_a_slow_follower_loses_an_exact_count_then_resumes_in_order() -> None:
    ring = FlowRing(capacity=4096, follower_queue=10)
    with ring.follow() as follower:
        for n in range(25):  # nobody reads: 10 queued, 15 lost
            ring.add(flow(f"/{n}"))
        got = [await follower.get() for _ in range(10)]
        assert [g.l7.http.url for g in got if not isinstance(g, Lost)] == [
            f"/{n}" for n in range(10)
        ]
        assert await follower.get() == Lost(15)
        ring.add(flow("/25"))
        after = await follower.get()
        assert not isinstance(after, Lost) and after.l7.http.url == "/25"
        assert ring.lost_by_followers == 15


async def test_the_gap_sits_between_the_flows_around_it() -> None:
    ring = FlowRing(follower_queue=2)
    with ring.follow() as follower:
        for n in range(5):  # /0 /1 queued, /2 /3 /4 lost
            ring.add(flow(f"/{n}"))
        assert not isinstance(await follower.get(), Lost)  # /0 read: room for one
        ring.add(flow("/5"))
        seen = [await follower.get() for _ in range(3)]
        labels = [s if isinstance(s, Lost) else s.l7.http.url for s in seen]
        assert labels == ["/1", Lost(3), "/5"]


async def test_a_follower_that_leaves_is_forgotten_but_its_loss_is_kept() -> None:
    ring = FlowRing(follower_queue=1)
    with ring.follow():
        ring.add(flow())
        ring.add(flow())
        assert ring.followers == 1
    assert ring.followers == 0 and ring.lost_by_followers == 1


async def test_get_waits_for_the_next_flow() -> None:
    ring = FlowRing()
    with ring.follow() as follower:
        waiting = asyncio.create_task(follower.get())
        await asyncio.sleep(0)
        assert not waiting.done()
        ring.add(flow("/late"))
        got = await waiting
        assert not isinstance(got, Lost) and got.l7.http.url == "/late"


def test_sampling_keeps_one_in_n_and_counts_the_rest() -> None:
    collector = FlowCollector(CollectorOptions(sample_every=3), lambda: None)
    for n in range(9):
        collector.add(flow(f"/{n}"))
    assert [f.l7.http.url for f in collector.ring.recent()] == ["/2", "/5", "/8"]
    assert collector.sampled_out == 6 and collector.ring.seen == 3
