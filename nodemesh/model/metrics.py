"""Prometheus metrics of the model store (default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BUILDS = Counter("nodemesh_model_builds", "Mesh model snapshots built")
BUILD_SECONDS = Histogram(
    "nodemesh_model_build_seconds",
    "Time to build one mesh model snapshot",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
OBJECTS = Gauge("nodemesh_model_objects", "Accepted objects in the model", ["kind"])
OBJECT_ERRORS = Gauge(
    "nodemesh_model_object_errors",
    "Objects (or fields of them) rejected by the model, by kind",
    ["kind"],
)
REDIRECTS = Gauge("nodemesh_model_l7_redirects", "Service ports redirected to the node Envoy")
