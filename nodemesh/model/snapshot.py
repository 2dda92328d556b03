"""One immutable, versioned snapshot of the whole mesh.

Sources never hand a MeshModel around half-built: the store builds a new one
from its accepted objects and publishes it whole. The xDS translator and the
eBPF planner each derive their output from the same snapshot, and both report
its `version`, so operators can tell whether Envoy and the kernel agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from nodemesh.model.gamma import Gamma
from nodemesh.model.objects import (
    Deployment,
    EndpointSlice,
    EnvoyConfig,
    L7Redirect,
    NetworkPolicy,
    ObjectError,
    ObjectWarning,
    Pod,
    Service,
    ServiceName,
)
from nodemesh.model.policy import KubeNetworkPolicy, Namespace
from nodemesh.model.routes import ReferenceGrant, Route


@dataclass(frozen=True, slots=True)
class BackendAddress:
    """One ready backend of one Service port, resolved through its EndpointSlices."""

    address: str
    port: int
    node_name: str | None
    pod_name: str | None
    ready: bool
    serving: bool
    terminating: bool
    # The EndpointSlice endpoint's topology zone (None: not given); proxyless
    # gRPC clients need a locality per endpoint group.
    zone: str | None = None


def _frozen(mapping: Mapping[Any, Any] | None = None) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class MeshModel:
    """The mesh at one version.

    `version` is a content hash of everything below (stable across restarts and
    across control-plane replicas for the same input); `generation` counts
    builds within this process and only orders them. Mappings are read-only
    views; every value is a frozen dataclass.
    """

    version: str
    generation: int
    services: Mapping[ServiceName, Service] = field(default_factory=_frozen)
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    pods: tuple[Pod, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    envoy_configs: tuple[EnvoyConfig, ...] = ()
    network_policies: tuple[NetworkPolicy, ...] = ()
    redirects: tuple[L7Redirect, ...] = ()
    errors: tuple[ObjectError, ...] = ()
    # service -> its backends per Service port number, derived from the slices.
    backends: Mapping[ServiceName, Mapping[int, tuple[BackendAddress, ...]]] = field(
        default_factory=_frozen
    )
    # Accepted objects that carry something worth telling (deprecated fields).
    warnings: tuple[ObjectWarning, ...] = ()
    # Gateway API (GAMMA): HTTPRoutes and GRPCRoutes (oldest first), grants,
    # and what they add up to per Service port, with each route's status.
    routes: tuple[Route, ...] = ()
    reference_grants: tuple[ReferenceGrant, ...] = ()
    gamma: Gamma = field(default_factory=Gamma)
    namespaces: tuple[Namespace, ...] = ()
    kube_network_policies: tuple[KubeNetworkPolicy, ...] = ()

    def backends_of(self, service: ServiceName, port: int) -> tuple[BackendAddress, ...]:
        """Backends of `service`'s port `port` (the Service port, not the target
        port); empty when the Service or port is unknown."""
        return self.backends.get(service, {}).get(port, ())
