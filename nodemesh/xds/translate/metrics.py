"""Translation metrics: how long a model takes to translate, how much it
produced, and how much of the previous round each stage could reuse (the
signal that incremental translation works on a live system)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TRANSLATE_SECONDS = Histogram(
    "nodemesh_xds_translate_seconds",
    "Time to translate one mesh model into Envoy resources",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RESOURCES = Gauge(
    "nodemesh_xds_translate_resources",
    "Envoy resources in the latest translation",
    ["type"],
)
STAGES = Counter(
    "nodemesh_xds_translate_stages",
    "Translation stages by how they were produced: reused whole from the previous "
    "round, patched (only changed services rebuilt), or rebuilt from per-object memos",
    ["stage", "mode"],
)
