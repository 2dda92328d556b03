"""L3/L4 policy parsing: CNP/CCNP rules and Kubernetes NetworkPolicy into PolicySpec."""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh.model.errors import ParseError
from nodemesh.model.objects import Kind, LabelSelector, NetworkPolicy, ObjectRef, ServiceName
from nodemesh.model.parse import parse_object
from nodemesh.model.policy import (
    NAMESPACE_LABEL,
    CIDRPeer,
    Entity,
    KubeNetworkPolicy,
    Namespace,
    PolicySpec,
    PortRule,
    identity_labels,
)
from nodemesh.model.store import MeshStore

NS = "io.cilium.k8s.namespace.labels."


def cnp(spec: dict[str, Any], kind: str = "CiliumNetworkPolicy") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p"}
    if kind == "CiliumNetworkPolicy":
        meta["namespace"] = "shop"
    base = {"endpointSelector": {"matchLabels": {"app": "web"}}}
    return {"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta, "spec": base | spec}


def knp(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "np", "namespace": "shop"},
        "spec": spec,
    }


def rules_of(raw: dict[str, Any]) -> PolicySpec:
    obj = parse_object(raw).obj
    if isinstance(obj, KubeNetworkPolicy):
        return obj.rules
    assert isinstance(obj, NetworkPolicy) and obj.rules is not None
    return obj.rules


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(tuple(sorted(labels.items())))


def test_cnp_namespaced_scoping_of_subject_and_peers() -> None:
    spec = rules_of(
        cnp(
            {
                "ingress": [
                    {"fromEndpoints": [{"matchLabels": {"app": "a"}}, {}]},
                    {
                        "fromEndpoints": [
                            {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "ops", "app": "b"}}
                        ]
                    },
                ]
            }
        )
    )
    assert spec.subject == sel(app="web", **{NAMESPACE_LABEL: "shop"})
    assert spec.enforce_ingress and not spec.enforce_egress
    first, second = spec.ingress
    assert first.selectors == (
        sel(app="a", **{NAMESPACE_LABEL: "shop"}),
        sel(**{NAMESPACE_LABEL: "shop"}),
    )
    # A selector that names a namespace keeps it (the k8s: source is dropped).
    assert second.selectors == (sel(app="b", **{NAMESPACE_LABEL: "ops"}),)


def test_ccnp_is_not_scoped() -> None:
    spec = rules_of(cnp({"egress": [{"toEndpoints": [{}]}]}, "CiliumClusterwideNetworkPolicy"))
    assert spec.subject == sel(app="web")
    assert spec.egress[0].selectors == (LabelSelector(),)


def test_cnp_entities_cidrs_ports_services_and_deny() -> None:
    spec = rules_of(
        cnp(
            {
                "egress": [
                    {"toEntities": ["world", "host"]},
                    {
                        "toCIDR": ["192.0.2.7/32"],
                        "toCIDRSet": [{"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25"]}],
                        "toPorts": [
                            {
                                "ports": [
                                    {"port": "443", "protocol": "TCP"},
                                    {"port": "dns", "protocol": "UDP"},
                                ]
                            }
                        ],
                    },
                    {"toServices": [{"k8sService": {"serviceName": "db"}}]},
                    {"toPorts": [{"ports": [{"port": "8000", "endPort": 8100}]}]},
                ],
                "egressDeny": [{"toEntities": ["world"], "toPorts": [{"ports": [{"port": "25"}]}]}],
            }
        )
    )
    ents, cidrs, svc, ports_only = spec.egress
    assert ents.entities == (Entity.WORLD, Entity.HOST) and not ents.any_peer
    assert cidrs.cidrs == (
        CIDRPeer("192.0.2.7/32"),
        CIDRPeer("198.51.100.0/24", ("198.51.100.128/25",)),
    )
    assert cidrs.ports == (PortRule(443, 0, "", "TCP"), PortRule(0, 0, "dns", "UDP"))
    assert svc.services == (ServiceName("shop", "db"),)
    assert ports_only.any_peer and ports_only.ports == (PortRule(8000, 8100, "", "ANY"),)
    assert spec.egress_deny[0].entities == (Entity.WORLD,)
    assert spec.enforce_egress


def test_cnp_empty_rule_enforces_and_allows_nothing() -> None:
    spec = rules_of(cnp({"ingress": [{}]}))
    assert spec.enforce_ingress
    (rule,) = spec.ingress
    assert not rule.any_peer and not rule.selectors and not rule.entities and not rule.cidrs


def test_cnp_enable_default_deny_false() -> None:
    spec = rules_of(
        cnp({"ingress": [{"fromEntities": ["world"]}], "enableDefaultDeny": {"ingress": False}})
    )
    assert not spec.enforce_ingress


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"ingress": [{"fromEntities": ["moon"]}]}, "spec.ingress[0].fromEntities[0]"),
        ({"ingress": [{"fromCIDR": ["10.0.0.300/8"]}]}, "spec.ingress[0].fromCIDR[0]"),
        (
            {"egress": [{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}]}]},
            "spec.egress[0].toCIDRSet[0].except[0]",
        ),
        (
            {"ingress": [{"toPorts": [{"ports": [{"port": "70000"}]}]}]},
            "spec.ingress[0].toPorts[0].ports[0].port",
        ),
        (
            {"ingress": [{"toPorts": [{"ports": [{"port": "Bad_Name"}]}]}]},
            "spec.ingress[0].toPorts[0].ports[0].port",
        ),
        (
            {"ingress": [{"toPorts": [{"ports": [{"port": "80", "endPort": 79}]}]}]},
            "spec.ingress[0].toPorts[0].ports[0].endPort",
        ),
        (
            {"ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "SCTP"}]}]}]},
            "spec.ingress[0].toPorts[0].ports[0].protocol",
        ),
        (
            {
                "ingress": [
                    {"fromEndpoints": [{"matchExpressions": [{"key": "a", "operator": "Is"}]}]}
                ]
            },
            "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator",
        ),
        ({"egress": [{"toFQDNs": [{"matchName": "x.io"}]}]}, "spec.egress[0].toFQDNs"),
        ({"nodeSelector": {}}, "spec.nodeSelector"),
    ],
)
def test_cnp_bad_input_names_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_object(cnp(spec))
    assert info.value.ref == ObjectRef(Kind.NETWORK_POLICY, "shop", "p")
    assert info.value.field == field


def test_knp_recipes() -> None:
    deny_all = rules_of(knp({"podSelector": {}}))
    assert deny_all.enforce_ingress and not deny_all.enforce_egress and deny_all.ingress == ()
    assert deny_all.subject == sel(**{NAMESPACE_LABEL: "shop"})

    allow_all = rules_of(knp({"podSelector": {}, "ingress": [{}]}))
    assert allow_all.ingress[0].any_peer and allow_all.ingress[0].ports == ()

    mixed = rules_of(
        knp(
            {
                "podSelector": {"matchLabels": {"app": "db"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {"matchLabels": {"app": "api"}}},
                            {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
                            {
                                "namespaceSelector": {"matchLabels": {"team": "x"}},
                                "podSelector": {"matchLabels": {"role": "m"}},
                            },
                            {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                        ],
                        "ports": [{"port": 5432}, {"protocol": "UDP", "port": 53, "endPort": 60}],
                    }
                ],
                "egress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}],
            }
        )
    )
    (rule,) = mixed.ingress
    assert rule.selectors == (
        sel(app="api", **{NAMESPACE_LABEL: "shop"}),
        sel(**{NS + "team": "ops"}),
        sel(role="m", **{NS + "team": "x"}),
    )
    assert rule.cidrs == (CIDRPeer("172.17.0.0/16", ("172.17.1.0/24",)),)
    assert rule.ports == (PortRule(5432, 0, "", "TCP"), PortRule(53, 60, "", "UDP"))
    assert mixed.enforce_egress and mixed.egress[0].any_peer
    assert mixed.egress[0].ports == (PortRule(0, 0, "dns", "UDP"),)


def test_knp_egress_only_and_bad_peer() -> None:
    spec = rules_of(knp({"podSelector": {}, "policyTypes": ["Egress"]}))
    assert spec.enforce_egress and not spec.enforce_ingress
    with pytest.raises(ParseError) as info:
        parse_object(
            knp(
                {
                    "podSelector": {},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "1.0.0.0/8"}, "podSelector": {}}]}],
                }
            )
        )
    assert info.value.field == "spec.ingress[0].from[0].ipBlock"
    with pytest.raises(ParseError) as info:
        parse_object(knp({"podSelector": {}, "policyTypes": ["Sideways"]}))
    assert info.value.field == "spec.policyTypes[0]"


def test_identity_labels_drop_rollout_labels_and_add_namespace() -> None:
    labels = identity_labels("shop", {"app": "web", "pod-template-hash": "abc"}, {"team": "t"})
    assert dict(labels) == {
        "app": "web",
        NAMESPACE_LABEL: "shop",
        NS + "team": "t",
        NS + "kubernetes.io/metadata.name": "shop",
    }


def test_namespace_object_and_kept_previous_policy() -> None:
    store = MeshStore()
    store.apply(
        "t",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"a": "b"}},
        },
    )
    good = knp({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})
    store.apply("t", good)
    model = store.build()
    assert model.namespaces == (Namespace(ObjectRef(Kind.NAMESPACE, "", "shop"), (("a", "b"),)),)
    (kept,) = model.kube_network_policies
    bad = knp({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]})
    bad["spec"]["ingress"][0]["ports"][0]["port"] = 99999
    store.apply("t", bad)
    model = store.build()
    # The bad version is refused by field; the previous one stays in force.
    assert model.kube_network_policies == (kept,)
    (error,) = model.errors
    assert error.field == "spec.ingress[0].ports[0].port" and error.kept_previous
