"""Snapshot cache of the xDS server: encode-once resources, immutable
snapshots keyed by node, and the `SnapshotSource` seam streams read from."""

from nodemesh.xds.cache.cache import (
    NodeHash,
    SnapshotCache,
    SnapshotSource,
    node_id_hash,
)
from nodemesh.xds.cache.errors import CacheError, SnapshotError
from nodemesh.xds.cache.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    EncodedResource,
    short_name,
)
from nodemesh.xds.cache.snapshot import Snapshot, view_version

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "CacheError",
    "EncodedResource",
    "NodeHash",
    "Snapshot",
    "SnapshotCache",
    "SnapshotError",
    "SnapshotSource",
    "node_id_hash",
    "short_name",
    "view_version",
]
