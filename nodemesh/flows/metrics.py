"""Golden metrics from flows (Prometheus), as Hubble's `flow` and `httpV2`
metrics and Istio's standard metrics count them.

Cardinality is bounded, by construction and by a cap:
- labels are workloads (or a reserved identity such as `reserved:host` when
  the model does not know the address), namespaces, the HTTP method (Envoy's
  enum: at most 10), the response code (100-599, else "other"), flow type and
  verdict (enums). Never a path, an address or a port: a flood of distinct
  paths or clients adds no series and no memory;
- at most `MAX_HTTP_SERIES` (2,000) distinct label sets for the HTTP
  metrics; past the cap, new combinations are counted under
  source_workload="overflow", destination_workload="overflow" with the
  response code's class (2xx) instead of the code, so the overflow adds at
  most 10 x 6 series (and `nodemesh_flow_metrics_overflow_total` says how
  often). The duration histogram's labels are a subset: same bound.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

from nodemesh._gen.nodemesh.v1 import flow_pb2

MAX_HTTP_SERIES = 2000
OVERFLOW = "overflow"

FLOWS = Counter(
    "nodemesh_flows_processed",
    "Flows the node agent processed, by type (L3_L4, L7) and verdict",
    ["type", "verdict"],
)
LOST = Counter(
    "nodemesh_flows_lost",
    "Events that did not become flows, by where they were lost "
    "(kernel_ring, malformed_access_log, follower)",
    ["source"],
)
HTTP_REQUESTS = Counter(
    "nodemesh_http_requests",
    "HTTP requests through the node Envoy, by source and destination workload, "
    "method and response code",
    [
        "source_namespace",
        "source_workload",
        "destination_namespace",
        "destination_workload",
        "method",
        "response_code",
    ],
)
HTTP_DURATION = Histogram(
    "nodemesh_http_request_duration_seconds",
    "Envoy's time from the first request byte to the last response byte, "
    "by source and destination workload",
    ["source_workload", "destination_workload"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
OVERFLOWED = Counter(
    "nodemesh_flow_metrics_overflow",
    f"HTTP requests counted under workload 'overflow' (more than {MAX_HTTP_SERIES} label sets)",
)


def _workload(endpoint: flow_pb2.Endpoint) -> str:
    if endpoint.workloads:
        return str(endpoint.workloads[0].name)
    if endpoint.pod_name:
        # A pod without a workload: its name is bounded by the model, not by traffic.
        return str(endpoint.pod_name)
    reserved = [label for label in endpoint.labels if label.startswith("reserved:")]
    return str(reserved[0]) if reserved else "unknown"


def _code(code: int) -> str:
    return str(code) if 100 <= code <= 599 else "other"


class FlowMetrics:
    """Counts each flow once; remembers which HTTP label sets exist (bounded)."""

    def __init__(self, max_series: int = MAX_HTTP_SERIES) -> None:
        self.max_series = max_series
        # Label set -> its children: `labels()` costs microseconds per call,
        # and this runs once per flow. Bounded as the series are.
        self._series: dict[tuple[str, ...], tuple[Any, Any]] = {}
        self._flows: dict[tuple[int, int], Any] = {}

    def flows_counter(self, flow: flow_pb2.Flow) -> Any:
        """The flows-by-type-and-verdict child that counts `flow` (a caller
        that meets many flows alike keeps it: `observe` for an L3/L4 flow is
        this and inc())."""
        key = (int(flow.Type), int(flow.verdict))
        counter = self._flows.get(key)
        if counter is None:
            counter = self._flows[key] = FLOWS.labels(
                type=flow_pb2.FlowType.Name(key[0]), verdict=flow_pb2.Verdict.Name(key[1])
            )
        return counter

    def observe(self, flow: flow_pb2.Flow) -> None:
        self.flows_counter(flow).inc()
        if flow.Type != flow_pb2.L7:
            return
        labels = (
            str(flow.source.namespace),
            _workload(flow.source),
            str(flow.destination.namespace),
            _workload(flow.destination),
            str(flow.l7.http.method) or "other",
            _code(flow.l7.http.code),
        )
        children = self._series.get(labels)
        if children is None:
            if len(self._series) >= self.max_series:
                OVERFLOWED.inc()
                # The code's class only: overflow adds at most 10 methods x 6 classes.
                code_class = labels[5] if labels[5] == "other" else labels[5][0] + "xx"
                labels = ("", OVERFLOW, "", OVERFLOW, labels[4], code_class)
            children = self._series.get(labels)
            if children is None:
                children = self._series[labels] = (
                    HTTP_REQUESTS.labels(*labels),
                    HTTP_DURATION.labels(labels[1], labels[3]),
                )
        children[0].inc()
        children[1].observe(flow.l7.latency_ns / 1e9)
