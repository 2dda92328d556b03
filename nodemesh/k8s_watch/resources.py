"""What nodemesh watches: one `ResourceSpec` per Kubernetes resource type."""

from __future__ import annotations

from dataclasses import dataclass

from nodemesh.model.objects import Kind


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """One watched resource type.

    `status_is_ours` marks the cilium.io kinds: nodemesh writes their status,
    so a change that touches only status must never reach the model (it would
    retranslate and write status again: a loop). For core kinds status is
    input (a Pod's IP lives there) and counts as content.
    """

    group: str
    version: str
    plural: str
    kind: Kind
    namespaced: bool = True
    status_is_ours: bool = False
    field_selector: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def source(self) -> str:
        """The ObjectSink source this informer owns."""
        return f"k8s:{self.plural}.{self.group or 'core'}"

    def __str__(self) -> str:
        return f"{self.plural}.{self.group or 'core'}/{self.version}"


SERVICES = ResourceSpec("", "v1", "services", Kind.SERVICE)
ENDPOINT_SLICES = ResourceSpec("discovery.k8s.io", "v1", "endpointslices", Kind.ENDPOINT_SLICE)
PODS = ResourceSpec("", "v1", "pods", Kind.POD)
ENVOY_CONFIGS = ResourceSpec(
    "cilium.io", "v2", "ciliumenvoyconfigs", Kind.ENVOY_CONFIG, status_is_ours=True
)
CLUSTERWIDE_ENVOY_CONFIGS = ResourceSpec(
    "cilium.io",
    "v2",
    "ciliumclusterwideenvoyconfigs",
    Kind.CLUSTERWIDE_ENVOY_CONFIG,
    namespaced=False,
    status_is_ours=True,
)
NETWORK_POLICIES = ResourceSpec(
    "cilium.io", "v2", "ciliumnetworkpolicies", Kind.NETWORK_POLICY, status_is_ours=True
)
CLUSTERWIDE_NETWORK_POLICIES = ResourceSpec(
    "cilium.io",
    "v2",
    "ciliumclusterwidenetworkpolicies",
    Kind.CLUSTERWIDE_NETWORK_POLICY,
    namespaced=False,
    status_is_ours=True,
)

# L3/L4 policy: Kubernetes NetworkPolicy (no status to write) and the
# namespaces whose labels its namespaceSelector reads.
KUBE_NETWORK_POLICIES = ResourceSpec(
    "networking.k8s.io", "v1", "networkpolicies", Kind.KUBE_NETWORK_POLICY
)
NAMESPACES = ResourceSpec("", "v1", "namespaces", Kind.NAMESPACE, namespaced=False)


# Gateway API (GAMMA): nodemesh writes the routes' status.parents entries that
# carry its controllerName; ReferenceGrants have no status.
HTTP_ROUTES = ResourceSpec(
    "gateway.networking.k8s.io", "v1", "httproutes", Kind.HTTP_ROUTE, status_is_ours=True
)
GRPC_ROUTES = ResourceSpec(
    "gateway.networking.k8s.io", "v1", "grpcroutes", Kind.GRPC_ROUTE, status_is_ours=True
)
REFERENCE_GRANTS = ResourceSpec(
    "gateway.networking.k8s.io", "v1beta1", "referencegrants", Kind.REFERENCE_GRANT
)


def default_resources(node_name: str | None = None) -> tuple[ResourceSpec, ...]:
    """Everything the mesh model needs. An agent passes its node name so it
    watches only its own node's pods (a fieldSelector on spec.nodeName)."""
    pods = PODS
    if node_name:
        pods = ResourceSpec(
            PODS.group,
            PODS.version,
            PODS.plural,
            PODS.kind,
            field_selector=f"spec.nodeName={node_name}",
        )
    return (
        SERVICES,
        ENDPOINT_SLICES,
        pods,
        ENVOY_CONFIGS,
        CLUSTERWIDE_ENVOY_CONFIGS,
        NETWORK_POLICIES,
        CLUSTERWIDE_NETWORK_POLICIES,
        HTTP_ROUTES,
        GRPC_ROUTES,
        REFERENCE_GRANTS,
        KUBE_NETWORK_POLICIES,
        NAMESPACES,
    )


def spec_for_kind(kind: Kind) -> ResourceSpec | None:
    for spec in default_resources():
        if spec.kind is kind:
            return spec
    return None
