"""The service clusters stage: an EDS Cluster and a ClusterLoadAssignment per
needed Service port.

This is where endpoint churn lands, so it is built to be cheap when little
changed: when the set of needed clusters is the very same as last round, only
Services whose backends mapping is a different object than last round are
looked at (found by walking both mappings side by side, which costs identity
checks only, when the model builder kept their order). Otherwise every
cluster is looked up, and the memo still returns the previous message for
backends that are equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message

from nodemesh.model.objects import ServiceName
from nodemesh.model.snapshot import BackendAddress, MeshModel
from nodemesh.xds.translate.result import ServiceCluster
from nodemesh.xds.translate.services import build_cluster, build_load_assignment

Backends = Mapping[ServiceName, Mapping[int, tuple[BackendAddress, ...]]]


@dataclass(eq=False)
class EndpointStage:
    """One round's service clusters; `needed` is the input it was built for."""

    needed: Mapping[str, ServiceCluster]
    backends: Backends
    clusters: dict[str, Message] = field(default_factory=dict)
    assignments: dict[str, Message] = field(default_factory=dict)
    inputs: dict[str, tuple[BackendAddress, ...]] = field(default_factory=dict)
    by_service: dict[ServiceName, list[str]] = field(default_factory=dict)


def _changed_services(old: Backends, new: Backends) -> list[ServiceName] | None:
    """Services whose backends changed, by identity; None when that cannot be
    told cheaply (a Service added or removed, or the order changed)."""
    if old is new:
        return []
    if len(old) != len(new):
        return None
    changed = []
    for (old_key, old_value), (new_key, new_value) in zip(old.items(), new.items(), strict=True):
        if old_key is not new_key:
            return None
        if old_value is not new_value:
            changed.append(new_key)
    return changed


def _assign(
    stage: EndpointStage,
    previous: EndpointStage | None,
    name: str,
    backends: tuple[BackendAddress, ...],
) -> None:
    old = previous.inputs.get(name) if previous is not None else None
    if previous is not None and old is not None and (old is backends or old == backends):
        stage.assignments[name] = previous.assignments[name]
        stage.inputs[name] = old
        return
    stage.assignments[name] = build_load_assignment(name, backends)
    stage.inputs[name] = backends


def _patch(model: MeshModel, previous: EndpointStage, changed: list[ServiceName]) -> EndpointStage:
    stage = EndpointStage(
        previous.needed,
        model.backends,
        previous.clusters,
        dict(previous.assignments),
        dict(previous.inputs),
        previous.by_service,
    )
    for service in changed:
        for name in previous.by_service.get(service, ()):
            cluster = previous.needed[name]
            _assign(stage, previous, name, model.backends_of(service, cluster.port))
    return stage


def endpoint_stage(
    model: MeshModel,
    needed: Mapping[str, ServiceCluster],
    previous: EndpointStage | None,
    connect_timeout_ms: int,
) -> EndpointStage:
    """Clusters and assignments for `needed`, reusing `previous` where it can."""
    if previous is not None and previous.needed is needed:
        changed = _changed_services(previous.backends, model.backends)
        if changed is not None:
            return _patch(model, previous, changed)
    stage = EndpointStage(needed, model.backends)
    for name in sorted(needed):
        cluster = needed[name]
        if previous is not None and previous.needed.get(name) == cluster:
            stage.clusters[name] = previous.clusters[name]
        else:
            stage.clusters[name] = build_cluster(cluster, connect_timeout_ms)
        stage.by_service.setdefault(cluster.service, []).append(name)
        _assign(stage, previous, name, model.backends_of(cluster.service, cluster.port))
    return stage
