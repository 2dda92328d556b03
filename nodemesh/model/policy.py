"""L3/L4 network policy in the model: one normalized shape for both kinds.

A CiliumNetworkPolicy (or its clusterwide twin) and a Kubernetes
`networking.k8s.io/v1` NetworkPolicy are both parsed into a `PolicySpec`:
a subject selector and allow/deny rules per direction, every selector
written over *identity labels* (see `identity_labels`). The namespace
scoping each kind implies is already folded into the selectors, so the
datapath planner never needs to know which kind a rule came from.

Identity labels follow Cilium: a pod's own labels (minus the ones that
change per rollout, `IGNORED_LABELS`), plus `io.kubernetes.pod.namespace`
and each of its namespace's labels under `io.cilium.k8s.namespace.labels.`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from nodemesh.model.objects import LabelSelector, ObjectRef, Pairs, ServiceName

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
# Kubernetes sets it on every namespace (1.21+); assumed when no Namespace object is known.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# Labels that differ between pods of one workload for no security reason
# (Cilium's default label filter excludes the same ones).
IGNORED_LABELS = frozenset(
    {
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "statefulset.kubernetes.io/pod-name",
        "controller-uid",
        "batch.kubernetes.io/controller-uid",
        "job-name",
        "batch.kubernetes.io/job-name",
    }
)


class Entity(StrEnum):
    """Cilium's `fromEntities`/`toEntities` names that nodemesh enforces."""

    WORLD = "world"  # outside the cluster: no pod, host or node address
    CLUSTER = "cluster"  # every pod, the host and remote nodes
    HOST = "host"  # this node
    REMOTE_NODE = "remote-node"  # other nodes
    UNMANAGED = "unmanaged"  # pods the mesh knows of but does not manage here
    ALL = "all"  # everything


@dataclass(frozen=True, slots=True)
class Namespace:
    """A namespace's labels: Kubernetes NetworkPolicy's namespaceSelector reads them."""

    ref: ObjectRef
    labels: Pairs


@dataclass(frozen=True, slots=True)
class CIDRPeer:
    """`fromCIDR`/`toCIDR`/`*CIDRSet`/`ipBlock`: a network and its exceptions,
    canonical text ("10.0.0.0/8"). Like Cilium, never selects a pod's own IP:
    pods are selected by labels."""

    cidr: str
    excepts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PortRule:
    """A port (0: every port), an optional range end, or a named port.

    `name` set means `port` is 0 and the number comes from the container
    ports of the pods on the receiving side of the rule. `protocol` is TCP,
    UDP or ANY.
    """

    port: int = 0
    end_port: int = 0
    name: str = ""
    protocol: str = "ANY"


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One rule: any of its peers, on any of its ports (empty: every port).

    `any_peer` is the L3 wildcard (a Kubernetes rule without `from`/`to`, or
    a Cilium rule with only `toPorts`): every source or destination,
    inside the cluster or not.
    """

    selectors: tuple[LabelSelector, ...] = ()
    entities: tuple[Entity, ...] = ()
    cidrs: tuple[CIDRPeer, ...] = ()
    services: tuple[ServiceName, ...] = ()
    any_peer: bool = False
    ports: tuple[PortRule, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """The L3/L4 part of one policy object.

    `enforce_ingress`/`enforce_egress`: the policy selects its subjects for
    that direction, which makes it default-deny for them except what some
    policy allows (a policy with `ingress: [{}]` enforces and allows nothing).
    Deny rules win over every allow.
    """

    ref: ObjectRef
    subject: LabelSelector
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()
    ingress_deny: tuple[PolicyRule, ...] = ()
    egress_deny: tuple[PolicyRule, ...] = ()
    enforce_ingress: bool = False
    enforce_egress: bool = False


@dataclass(frozen=True, slots=True)
class KubeNetworkPolicy:
    """A `networking.k8s.io/v1` NetworkPolicy (all of it is L3/L4)."""

    ref: ObjectRef
    rules: PolicySpec


def identity_labels(
    namespace: str, pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str] | None
) -> Pairs:
    """The security-relevant labels of a pod: what its identity is made of."""
    out = {k: v for k, v in pod_labels.items() if k not in IGNORED_LABELS}
    out[NAMESPACE_LABEL] = namespace
    ns_labels = dict(namespace_labels or {})
    ns_labels.setdefault(NAMESPACE_NAME_LABEL, namespace)
    for key, value in ns_labels.items():
        out[NAMESPACE_LABELS_PREFIX + key] = value
    return tuple(sorted(out.items()))
