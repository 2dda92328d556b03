"""Prometheus metrics read from the kernel at scrape time: per-policy verdict
counters (`nm_policy_stats_v1`, per CPU, summed) and lost events.

One collector per process (`COLLECTOR`, registered on first `attach`); the
agent points it at its pins and at the policy names of the plan it applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import structlog
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from nodemesh.ebpf import events, pinned
from nodemesh.ebpf.errors import DatapathError
from nodemesh.ebpf.mirrors import U32, PolicyStats

log = structlog.get_logger("nodemesh.ebpf.policy_metrics")

VERDICTS = "nodemesh_policy_verdicts"
LOST = "nodemesh_datapath_events_lost"


class PolicyCollector(Collector):
    def __init__(self) -> None:
        self.maps_dir: Path | None = None
        self.names: tuple[str, ...] = ()
        self._registered = False

    def attach(self, maps_dir: Path, names: tuple[str, ...]) -> None:
        self.maps_dir, self.names = maps_dir, names
        if not self._registered:
            REGISTRY.register(self)
            self._registered = True

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(VERDICTS, "L3/L4 policy verdicts", labels=["policy", "verdict"])
        yield CounterMetricFamily(LOST, "Datapath events the ring had no room for")

    def collect(self) -> Iterator[CounterMetricFamily]:
        verdicts = CounterMetricFamily(
            VERDICTS, "L3/L4 policy verdicts", labels=["policy", "verdict"]
        )
        lost = CounterMetricFamily(LOST, "Datapath events the ring had no room for")
        if self.maps_dir is not None:
            try:
                self._read(verdicts)
                lost.add_metric([], events.lost(self.maps_dir))
            except DatapathError as exc:  # pins gone (cleanup): report nothing
                log.warning("policy_counters_unreadable", error=str(exc))
        yield verdicts
        yield lost

    def _read(self, family: CounterMetricFamily) -> None:
        assert self.maps_dir is not None
        with pinned.open_map(self.maps_dir, pinned.POLICY_STATS) as m:
            for pid, name in enumerate(self.names):
                per_cpu = events.read_percpu(m.fd, U32(pid), PolicyStats)
                family.add_metric([name, "allowed"], sum(v.as_tuple()[0] for v in per_cpu))
                family.add_metric([name, "denied"], sum(v.as_tuple()[1] for v in per_cpu))


COLLECTOR = PolicyCollector()
