"""Golden metrics stay bounded: paths and addresses are never labels, and
label sets past the cap fold into 'overflow'."""

from __future__ import annotations

import tracemalloc

from prometheus_client import REGISTRY

from nodemesh.flows.collector import CollectorOptions, FlowCollector
from nodemesh.flows.enrich import Resolver
from nodemesh.flows.l7 import http_flow
from nodemesh.flows.metrics import FlowMetrics
from tests.support.flows import als_message, canary_model, http_entry

MODEL = canary_model()


def _series(name: str) -> int:
    return sum(
        1
        for m in REGISTRY.collect()
        if m.name == name
        for s in m.samples
        if s.name == f"{name}_total"
    )


def test_a_flood_of_distinct_paths_and_clients_adds_no_series_and_no_memory() -> None:
    collector = FlowCollector(CollectorOptions("n", ring_capacity=16), lambda: MODEL)
    collector.access_log_message(als_message(http_entry(path="/warm")))
    before = _series("nodemesh_http_requests")
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    for n in range(2000):
        entry = http_entry(path=f"/item/{n}", source=f"192.0.2.{n % 250}")
        collector.access_log_message(als_message(entry))
    grown, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # One more series at most: the world's requests (a new source label, once).
    assert _series("nodemesh_http_requests") <= before + 1
    assert len(collector.ring) == 16
    # 2,000 flows passed through; what stays is the 16-flow ring and a few series.
    assert grown - base < 2_000_000


def test_label_sets_past_the_cap_are_counted_as_overflow() -> None:
    metrics = FlowMetrics(max_series=2)
    resolver = Resolver(MODEL)
    for code in (200, 201, 202, 203):
        metrics.observe(http_flow(http_entry(code=code), resolver, "n"))
    assert len(metrics._series) == 3  # two real, one overflow
    assert ("", "overflow", "", "overflow", "GET", "2xx") in metrics._series
