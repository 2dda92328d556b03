"""Prometheus metrics of the xDS server, named in the spirit of istiod's
(pilot_xds, pilot_xds_pushes, pilot_total_xds_rejects, pilot_proxy_convergence_time).

The wiring passes its own registry (the admin port serves it); otherwise one
module-level set is registered on prometheus-client's default registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Push-to-ACK convergence spans sub-millisecond (one local Envoy) to seconds
# (a thousand streams after a big change); the buckets cover both.
_CONVERGENCE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BUILD_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True)
class XdsMetrics:
    """Every metric the server and cache record."""

    connected_streams: Gauge
    pushes_total: Counter
    nacks_total: Counter
    acks_total: Counter
    push_to_ack_seconds: Histogram
    snapshot_build_seconds: Histogram
    bytes_sent_total: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> XdsMetrics:
        """Register the metrics on `registry` (once per registry)."""
        return cls(
            connected_streams=Gauge(
                "nodemesh_xds_connected_streams",
                "ADS streams currently connected, by API (sotw or delta).",
                ["api"],
                registry=registry,
            ),
            pushes_total=Counter(
                "nodemesh_xds_pushes_total",
                "xDS responses sent, by resource type.",
                ["type"],
                registry=registry,
            ),
            nacks_total=Counter(
                "nodemesh_xds_nacks_total",
                "Responses a client rejected (NACK), by resource type.",
                ["type"],
                registry=registry,
            ),
            acks_total=Counter(
                "nodemesh_xds_acks_total",
                "Responses a client accepted (ACK), by resource type.",
                ["type"],
                registry=registry,
            ),
            push_to_ack_seconds=Histogram(
                "nodemesh_xds_push_to_ack_seconds",
                "Time from sending a response to the client's ACK (convergence).",
                ["type"],
                buckets=_CONVERGENCE_BUCKETS,
                registry=registry,
            ),
            snapshot_build_seconds=Histogram(
                "nodemesh_xds_snapshot_build_seconds",
                "Time to encode a snapshot from translated resources.",
                buckets=_BUILD_BUCKETS,
                registry=registry,
            ),
            bytes_sent_total=Counter(
                "nodemesh_xds_bytes_sent_total",
                "Serialized response bytes written to ADS streams, by resource type.",
                ["type"],
                registry=registry,
            ),
        )


@dataclass(frozen=True, slots=True)
class TypeCounters:
    """The labelled children for one resource type, looked up once per
    stream instead of on every push (labels() is a locked dict lookup)."""

    pushes: Counter
    nacks: Counter
    acks: Counter
    push_to_ack: Histogram
    bytes_sent: Counter

    @classmethod
    def of(cls, metrics: XdsMetrics, kind: str) -> TypeCounters:
        return cls(
            pushes=metrics.pushes_total.labels(type=kind),
            nacks=metrics.nacks_total.labels(type=kind),
            acks=metrics.acks_total.labels(type=kind),
            push_to_ack=metrics.push_to_ack_seconds.labels(type=kind),
            bytes_sent=metrics.bytes_sent_total.labels(type=kind),
        )


_default: XdsMetrics | None = None


def default_metrics() -> XdsMetrics:
    """The module-level metrics on prometheus-client's default registry."""
    global _default
    if _default is None:
        _default = XdsMetrics.create(REGISTRY)
    return _default
