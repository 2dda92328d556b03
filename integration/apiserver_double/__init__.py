"""A Kubernetes API server double for tests and benchmarks (see server.py)."""

from .server import ApiServerDouble
from .store import RESOURCE_TYPES, ObjectStore, ResourceType, find_type, type_of_kind
from .synthetic import synthetic_cluster

__all__ = [
    "RESOURCE_TYPES",
    "ApiServerDouble",
    "ObjectStore",
    "ResourceType",
    "find_type",
    "synthetic_cluster",
    "type_of_kind",
]
