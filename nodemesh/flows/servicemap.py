"""The service map: workloads as nodes, traffic between them as edges.

Built from flows as they arrive. Each edge keeps counts by HTTP status class
and by verdict, a request rate over the last `RATE_WINDOW` seconds and its
last `RECENT` flows (for the page's click-through). Memory is bounded: edges
are pairs of names the model bounds (workloads, pods, reserved identities,
never addresses or paths), capped at `MAX_EDGES`; past it, flows count on
one "overflow" edge.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from nodemesh._gen.nodemesh.v1 import flow_pb2
from nodemesh.flows import text

RECENT = 20
RATE_WINDOW = 10.0
MAX_EDGES = 500


def node_name(endpoint: flow_pb2.Endpoint) -> str:
    """A map node: the workload, else the pod, else the reserved identity."""
    if endpoint.workloads:
        return f"{endpoint.namespace}/{endpoint.workloads[0].name}"
    if endpoint.pod_name:
        return f"{endpoint.namespace}/{endpoint.pod_name}"
    for label in endpoint.labels:
        if label.startswith("reserved:"):
            return str(label)
    return "reserved:unknown"


def _status_class(flow: flow_pb2.Flow) -> str:
    code = flow.l7.http.code if flow.Type == flow_pb2.L7 else 0
    return f"{code // 100}xx" if code else "none"


@dataclass
class Edge:
    source: str
    destination: str
    requests: int = 0
    status: Counter[str] = field(default_factory=Counter)
    verdicts: Counter[str] = field(default_factory=Counter)
    clusters: Counter[str] = field(default_factory=Counter)
    recent: deque[flow_pb2.Flow] = field(default_factory=lambda: deque(maxlen=RECENT))
    times: deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def add(self, flow: flow_pb2.Flow, now: float) -> None:
        self.requests += 1
        self.status[_status_class(flow)] += 1
        self.verdicts[text.verdict(flow)] += 1
        if flow.l7.upstream_cluster:
            self.clusters[flow.l7.upstream_cluster] += 1
        self.recent.append(flow)
        self.times.append(now)

    def rate(self, now: float) -> float:
        while self.times and self.times[0] < now - RATE_WINDOW:
            self.times.popleft()
        return len(self.times) / RATE_WINDOW

    def summary(self, now: float) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "requests": self.requests,
            "rate": round(self.rate(now), 2),
            "status": dict(self.status),
            "verdicts": dict(self.verdicts),
            "clusters": dict(self.clusters),
            "denied": self.verdicts.get("DROPPED", 0),
        }


class ServiceMap:
    def __init__(self, max_edges: int = MAX_EDGES) -> None:
        self.max_edges = max_edges
        self.edges: dict[tuple[str, str], Edge] = {}
        self.generation = 0  # bumps on every flow: the page's "changed" signal

    def add(self, flow: flow_pb2.Flow) -> None:
        key = (node_name(flow.source), node_name(flow.destination))
        edge = self.edges.get(key)
        if edge is None:
            if len(self.edges) >= self.max_edges:
                key = ("overflow", "overflow")
                edge = self.edges.get(key)
            if edge is None:
                edge = self.edges[key] = Edge(*key)
        edge.add(flow, time.monotonic())
        self.generation += 1

    def graph(self) -> dict[str, Any]:
        now = time.monotonic()
        nodes = sorted({name for key in self.edges for name in key})
        return {
            "generation": self.generation,
            "nodes": [{"id": n} for n in nodes],
            "edges": [e.summary(now) for _, e in sorted(self.edges.items())],
        }

    def recent(self, source: str, destination: str) -> list[dict[str, str]]:
        edge = self.edges.get((source, destination))
        if edge is None:
            return []
        return [
            dict(
                zip(
                    ("time", "source", "destination", "type", "verdict", "summary"),
                    text.row(f),
                    strict=True,
                )
            )
            for f in reversed(edge.recent)
        ]
