"""Backoff and the per-object token bucket, with injected randomness and clock."""

from __future__ import annotations

import random

from nodemesh.k8s_watch.backoff import Backoff
from nodemesh.k8s_watch.reporter import TokenBucket
from nodemesh.k8s_watch.settings import WatchSettings


def test_backoff_doubles_to_the_cap_with_jitter_below_the_base() -> None:
    settings = WatchSettings(backoff_initial=1.0, backoff_max=8.0, backoff_jitter=0.5)
    backoff = Backoff(settings, random.Random(7))
    delays = [backoff.next() for _ in range(8)]
    bases = [1, 2, 4, 8, 8, 8, 8, 8]
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.5 <= delay <= base
    assert len(set(delays)) == len(delays), "jitter spreads retries"
    backoff.reset()
    assert backoff.next() <= 1.0


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=0.5, burst=2)
    assert bucket.take(100.0) and bucket.take(100.0)
    assert not bucket.take(100.0)
    assert not bucket.take(101.0)  # half a token
    assert bucket.take(102.0)
    assert not bucket.take(102.0)
    assert bucket.take(200.0) and bucket.take(200.0)  # refills only up to the burst
    assert not bucket.take(200.0)
