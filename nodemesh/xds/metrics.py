"""Prometheus metrics of the xDS server and cache, named in the spirit of
istiod's (pilot_xds, pilot_xds_pushes, pilot_total_xds_rejects,
pilot_proxy_convergence_time).

One metrics style for all of nodemesh: module-level collectors on
prometheus-client's default registry. Why this one and not injected
registries: a process has exactly one /metrics endpoint (the admin port
serves the default registry), every other package (model, translate,
k8s_watch, node, wiring) already records this way, and an injected registry
bought only test isolation, which tests get as well by reading the change
of a sample (`REGISTRY.get_sample_value` before and after).

The server records these only through its callbacks (`XdsMetricsRecorder`
in `nodemesh.xds.server.callbacks`); the `type` label is always a short name
from `nodemesh.xds.vocab` or `other`, never a client's type URL.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Push-to-ACK convergence spans sub-millisecond (one local Envoy) to seconds
# (a thousand streams after a big change); the buckets cover both.
_CONVERGENCE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BUILD_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

CONNECTED_STREAMS = Gauge(
    "nodemesh_xds_connected_streams",
    "ADS streams currently connected, by API (sotw or delta).",
    ["api"],
)
PUSHES = Counter("nodemesh_xds_pushes_total", "xDS responses sent, by resource type.", ["type"])
NACKS = Counter(
    "nodemesh_xds_nacks_total", "Responses a client rejected (NACK), by resource type.", ["type"]
)
ACKS = Counter(
    "nodemesh_xds_acks_total", "Responses a client accepted (ACK), by resource type.", ["type"]
)
PUSH_TO_ACK_SECONDS = Histogram(
    "nodemesh_xds_push_to_ack_seconds",
    "Time from sending a response to the client's ACK (convergence).",
    ["type"],
    buckets=_CONVERGENCE_BUCKETS,
)
SNAPSHOT_BUILD_SECONDS = Histogram(
    "nodemesh_xds_snapshot_build_seconds",
    "Time to encode a snapshot from translated resources.",
    buckets=_BUILD_BUCKETS,
)
BYTES_SENT = Counter(
    "nodemesh_xds_bytes_sent_total",
    "Serialized response bytes written to ADS streams, by resource type.",
    ["type"],
)
# Recorded by the stream's identity check (`nodemesh.xds.server.identity`),
# not through callbacks: a refused stream never reaches them.
IDENTITY_REFUSED = Counter(
    "nodemesh_xds_identity_refused_total",
    "Streams refused because the client certificate does not name the node id "
    "claimed, by reason (mismatch, no_usable_san).",
    ["reason"],
)
