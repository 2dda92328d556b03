"""The mesh model's value types.

Every type here is a frozen dataclass built only from immutable parts (tuples,
strings, ints), so one model snapshot can be shared by the xDS translator, the
eBPF planner and the operator views without copying or locking. Mappings such
as labels are stored as sorted tuples of pairs; `as_dict` gives a dict back.

These types say nothing about Envoy or the kernel: the model is what the user
declared (Kubernetes-shaped objects, already validated) plus what follows from
it (`L7Redirect`). The outputs derive their own shapes from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodemesh.model.policy import PolicySpec

Pairs = tuple[tuple[str, str], ...]


def pairs(mapping: Mapping[str, str] | None) -> Pairs:
    """Freeze a mapping into sorted (key, value) pairs."""
    return tuple(sorted((mapping or {}).items()))


def as_dict(frozen: Pairs) -> dict[str, str]:
    return dict(frozen)


class Kind(StrEnum):
    """The Kubernetes kinds the model is built from."""

    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    DEPLOYMENT = "Deployment"
    POD = "Pod"
    ENVOY_CONFIG = "CiliumEnvoyConfig"
    CLUSTERWIDE_ENVOY_CONFIG = "CiliumClusterwideEnvoyConfig"
    NETWORK_POLICY = "CiliumNetworkPolicy"
    CLUSTERWIDE_NETWORK_POLICY = "CiliumClusterwideNetworkPolicy"
    HTTP_ROUTE = "HTTPRoute"
    GRPC_ROUTE = "GRPCRoute"
    REFERENCE_GRANT = "ReferenceGrant"
    KUBE_NETWORK_POLICY = "NetworkPolicy"  # networking.k8s.io/v1
    NAMESPACE = "Namespace"

    @property
    def cluster_scoped(self) -> bool:
        return self in (
            Kind.CLUSTERWIDE_ENVOY_CONFIG,
            Kind.CLUSTERWIDE_NETWORK_POLICY,
            Kind.NAMESPACE,
        )


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """Identifies one source object. `namespace` is "" for cluster-scoped kinds."""

    kind: Kind
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind.value} {where}"


@dataclass(frozen=True, slots=True, order=True)
class ServiceName:
    """A Service by namespace and name: how CECs, CNPs and clusters refer to one."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class SelectorRequirement:
    """One `matchExpressions` entry: operator is In, NotIn, Exists or DoesNotExist."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator == "In":
            return present and labels[self.key] in self.values
        # NotIn: absent keys satisfy it, as in Kubernetes.
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes label selector. The empty selector selects everything."""

    match_labels: Pairs = ()
    match_expressions: tuple[SelectorRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    protocol: str  # "TCP", "UDP" or "SCTP"
    target_port: int | str  # a number, or a named container port
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class Service:
    ref: ObjectRef
    cluster_ips: tuple[str, ...]  # empty for headless Services
    ports: tuple[ServicePort, ...]
    selector: Pairs | None  # None: endpoints are managed by hand (EndpointSlices only)
    type: str = "ClusterIP"
    labels: Pairs = ()

    @property
    def service_name(self) -> ServiceName:
        return ServiceName(self.ref.namespace, self.ref.name)


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of an EndpointSlice (usually one pod)."""

    addresses: tuple[str, ...]
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None = None
    pod_name: str | None = None
    zone: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    ref: ObjectRef
    service_name: str  # the kubernetes.io/service-name label
    address_type: str  # "IPv4", "IPv6" or "FQDN"
    ports: tuple[EndpointPort, ...]
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """A pod's `spec.containers[].ports[]` entry: what named policy ports resolve to."""

    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Pod:
    """Only what the mesh needs of a pod: who it is, where it runs, its labels."""

    ref: ObjectRef
    labels: Pairs
    ips: tuple[str, ...]
    node_name: str | None
    phase: str = "Running"
    # metadata.uid: where the kubelet puts the pod's cgroup (the node agent
    # keys L7 steering by it). None when the source gave none (hand-written YAML).
    uid: str | None = None
    # metadata.deletionTimestamp is set: the pod is terminating (its
    # processes may still run, e.g. an Envoy draining during a rollout).
    deleting: bool = False
    container_ports: tuple[ContainerPort, ...] = ()
    # spec.hostNetwork: the pod's IPs are the node's (identity host in policy).
    host_network: bool = False


@dataclass(frozen=True, slots=True)
class Deployment:
    """Kept so the model can say which workloads exist (the demo runs one backend
    per replica); Deployments never produce Envoy or kernel state by themselves."""

    ref: ObjectRef
    labels: Pairs
    replicas: int
    selector: LabelSelector
    template_labels: Pairs
    container_ports: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RedirectedService:
    """A `spec.services` or `spec.backendServices` entry of a CiliumEnvoyConfig.

    `ports` empty means every port of the Service. `listener` names the CEC
    listener to redirect to; "" means the CEC's only (or synthesized) listener.
    """

    service: ServiceName
    ports: tuple[int, ...] = ()
    listener: str = ""


@dataclass(frozen=True, slots=True)
class EnvoyResource:
    """One raw Envoy resource from `spec.resources`, as the user wrote it.

    `body` is canonical JSON (sorted keys) of the resource without "@type", so
    the value is immutable and hashable; the xDS side parses it into protobuf.
    `field` is where it came from, e.g. "spec.resources[0]", for error messages.
    """

    type_url: str
    name: str
    body: str
    field: str


@dataclass(frozen=True, slots=True)
class EnvoyConfig:
    """A CiliumEnvoyConfig or CiliumClusterwideEnvoyConfig."""

    ref: ObjectRef
    services: tuple[RedirectedService, ...]
    backend_services: tuple[RedirectedService, ...]
    resources: tuple[EnvoyResource, ...]
    node_selector: LabelSelector | None = None
    creation_timestamp: str = ""  # RFC 3339; orders conflicting configs (oldest wins)


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A CNP `headerMatches` entry; `value` None means "header present"."""

    name: str
    value: str | None = None
    mismatch: str = ""  # "", "LOG", "ADD", "DELETE", "REPLACE" (Cilium's semantics)


@dataclass(frozen=True, slots=True)
class HTTPRule:
    """One CNP `rules.http` entry. All fields None/empty means allow everything.

    `method` and `path` are extended POSIX regexes anchored at both ends, as in
    Cilium; `headers` entries are "Name" or "Name: value".
    """

    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: tuple[str, ...] = ()
    header_matches: tuple[HeaderMatch, ...] = ()

    @property
    def allows_everything(self) -> bool:
        return not (self.method or self.path or self.host or self.headers or self.header_matches)


@dataclass(frozen=True, slots=True)
class PortProtocol:
    port: int
    protocol: str = "ANY"


@dataclass(frozen=True, slots=True)
class EgressRule:
    """One CNP egress rule with `toServices`. `http` is None when the rule has no
    L7 part (it is then an L3/L4 rule and redirects nothing)."""

    to_services: tuple[ServiceName, ...]
    to_ports: tuple[PortProtocol, ...] = ()
    http: tuple[HTTPRule, ...] | None = None


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """A CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy.

    `egress` is the L7 part (toServices with rules.http: redirects);
    `rules` the L3/L4 part the kernel enforces (None: built by hand with
    no L3/L4 part)."""

    ref: ObjectRef
    endpoint_selector: LabelSelector
    egress: tuple[EgressRule, ...]
    rules: PolicySpec | None = None


class RedirectOrigin(StrEnum):
    ENVOY_CONFIG = "envoy-config"  # CEC spec.services: every client is steered
    NETWORK_POLICY = "network-policy"  # CNP rules.http: only the selected pods
    GATEWAY_ROUTE = "gateway-route"  # HTTPRoute/GRPCRoute on a Service (GAMMA)


@dataclass(frozen=True, slots=True)
class HTTPPolicy:
    """The HTTP allow-list one network policy imposes on one redirected service.

    `clients` selects the pods the policy applies to; `client_ips` are those
    pods' IPs at this model version (Envoy tells clients apart by source IP).
    A request from one of them is allowed only if some rule matches; Envoy
    answers 403 otherwise.
    """

    owner: ObjectRef
    clients: LabelSelector
    client_ips: tuple[str, ...]
    rules: tuple[HTTPRule, ...]


@dataclass(frozen=True, slots=True)
class L7Redirect:
    """A service port whose connections go to the node-local Envoy.

    Derived from the accepted CECs and CNPs, one per (service, port, protocol).
    `proxy_port` is the node-local Envoy listener port, allocated
    deterministically from the model; the listener is named `listener` in xDS
    and serves the RouteConfiguration `route_config`.

    `clients` says whose connections the kernel steers: None means every
    client (a CEC `services` entry with no HTTP policy on the port), otherwise
    the pods matching any selector (CNP `rules.http`; with a CEC on the same
    port too, the CEC routes what the policies select). `policies` are the
    HTTP allow-lists Envoy enforces; empty means no HTTP enforcement.
    `owners` are the CECs/CNPs that caused it.
    """

    service: ServiceName
    port: int
    protocol: str
    proxy_port: int
    listener: str
    route_config: str
    origin: RedirectOrigin
    owners: tuple[ObjectRef, ...]
    clients: tuple[LabelSelector, ...] | None
    policies: tuple[HTTPPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class ObjectError:
    """Why an object (or one field of it) was rejected.

    `field` is a dotted path into the object ("spec.resources[0].virtual_hosts").
    When the object had an earlier accepted version, that version stays in
    effect and `kept_previous` is True.
    """

    ref: ObjectRef
    field: str
    reason: str
    kept_previous: bool = False

    def __str__(self) -> str:
        keep = " (previous version kept)" if self.kept_previous else ""
        return f"{self.ref}: {self.field}: {self.reason}{keep}"


@dataclass(frozen=True, slots=True)
class ObjectWarning:
    """Something accepted but worth telling the user, e.g. a deprecated field.

    Unlike an ObjectError, the object is in effect; `field` is the dotted path
    of what the warning is about ("spec.resources[0]...total_weight").
    """

    ref: ObjectRef
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.ref}: {self.field}: {self.reason}"
