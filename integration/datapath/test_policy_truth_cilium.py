"""Random CiliumNetworkPolicy sets (allow and deny) against a reference
evaluator written from Cilium's policy documentation
(https://docs.cilium.io/en/stable/security/policy/), not nodemesh's code:

- a namespaced policy selects endpoints of its own namespace, and its
  fromEndpoints/toEndpoints selectors match only its namespace unless they
  name `k8s:io.kubernetes.pod.namespace`;
- a policy with ingress (or ingressDeny) rules puts its endpoints in
  default deny for ingress; likewise egress;
- a rule's L3 part is any of its endpoint selectors or entities (`cluster`
  and `all` include every pod); a rule with only `toPorts` applies to every
  peer; an empty rule `{}` matches nothing;
- a rule's L4 part is any of its ports (protocol ANY matches TCP and UDP);
  no toPorts: every port;
- a deny rule that matches wins over every allow.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from .conftest import Datapath
from .node import MeshNode
from .policy_world import NAMESPACE_LABELS, PolicyWorld
from .test_policy_truth_table import APPS, _selects

pytestmark = pytest.mark.privileged

NS_KEY = "k8s:io.kubernetes.pod.namespace"
Pod = tuple[str, dict[str, str]]


def _endpoint_matches(selector: dict[str, Any], policy_ns: str, pod: Pod) -> bool:
    labels = dict(selector.get("matchLabels") or {})
    namespace = labels.pop(NS_KEY, policy_ns)
    return pod[0] == namespace and _selects({"matchLabels": labels}, pod[1])


def _rule_matches(
    rule: dict[str, Any], policy_ns: str, peer: Pod, port: int, kind: str, d: str
) -> bool:
    endpoints = rule.get(f"{d}Endpoints")
    entities = rule.get(f"{d}Entities")
    ports = rule.get("toPorts")
    if endpoints is None and entities is None:
        l3 = ports is not None  # only toPorts: every peer; {}: none
    else:
        l3 = any(_endpoint_matches(s, policy_ns, peer) for s in endpoints or []) or any(
            e in ("cluster", "all") for e in entities or []
        )
    if not l3:
        return False
    if ports is None:
        return True
    for entry in (p for block in ports for p in block.get("ports", [])):
        proto = entry.get("protocol", "ANY")
        if proto in ("ANY", kind.upper()) and int(entry.get("port", "0")) in (0, port):
            return True
    return False


def _direction_allows(
    policies: list[dict[str, Any]], subject: Pod, peer: Pod, port: int, kind: str, ingress: bool
) -> bool:
    key, deny_key, d = (
        ("ingress", "ingressDeny", "from") if ingress else ("egress", "egressDeny", "to")
    )
    enforced = allowed = denied = False
    for p in policies:
        ns, spec = p["metadata"]["namespace"], p["spec"]
        if ns != subject[0] or not _selects(spec["endpointSelector"], subject[1]):
            continue
        if spec.get(key) or spec.get(deny_key):
            enforced = True
        allowed |= any(_rule_matches(r, ns, peer, port, kind, d) for r in spec.get(key) or [])
        denied |= any(_rule_matches(r, ns, peer, port, kind, d) for r in spec.get(deny_key) or [])
    return not denied and (allowed or not enforced)


def expected(policies: list[dict[str, Any]], client: Pod, server: Pod, port: int, kind: str) -> str:
    if not _direction_allows(policies, client, server, port, kind, ingress=False):
        return "EPERM"
    if not _direction_allows(policies, server, client, port, kind, ingress=True):
        return "timeout"
    return "ok"


def _selector(rng: random.Random) -> dict[str, Any]:
    labels: dict[str, str] = {}
    if rng.random() < 0.7:
        labels["app"] = rng.choice(APPS)
    if rng.random() < 0.3:
        labels[NS_KEY] = rng.choice(list(NAMESPACE_LABELS))
    return {"matchLabels": labels}


def _rule(rng: random.Random, d: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    choice = rng.randrange(5)
    if choice < 3:
        rule[f"{d}Endpoints"] = [_selector(rng) for _ in range(rng.randrange(1, 3))]
    elif choice == 3:
        rule[f"{d}Entities"] = [rng.choice(["cluster", "all"])]
    if rng.random() < 0.6 or not rule:
        options = [
            {"port": "80", "protocol": "TCP"},
            {"port": "8080"},
            {"port": "53", "protocol": "UDP"},
            {"port": "53", "protocol": "ANY"},
        ]
        rule["toPorts"] = [{"ports": rng.sample(options, rng.randrange(1, 3))}]
        if rng.random() < 0.1:
            del rule["toPorts"]  # sometimes the empty rule {}
    return rule


def random_cnps(rng: random.Random, count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        spec: dict[str, Any] = {
            "endpointSelector": {"matchLabels": {"app": rng.choice(APPS)}}
            if rng.random() < 0.7
            else {}
        }
        for key, d in (("ingress", "from"), ("egress", "to")):
            if rng.random() < 0.6:
                spec[key] = [_rule(rng, d) for _ in range(rng.randrange(1, 3))]
            if rng.random() < 0.25:
                spec[f"{key}Deny"] = [_rule(rng, d)]
        out.append(
            {
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumNetworkPolicy",
                "metadata": {"name": f"c{i}", "namespace": rng.choice(list(NAMESPACE_LABELS))},
                "spec": spec,
            }
        )
    return out


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_cilium_policies_match_the_reference(
    node: MeshNode, datapath: Datapath, seed: int
) -> None:
    world = PolicyWorld(node)
    world.build()
    rng = random.Random(seed)
    pods = {p.key: (p.namespace, world.labels[p.key]) for p in world.pods}
    seen: set[str] = set()
    for _round in range(2):
        policies = random_cnps(rng, rng.randrange(2, 6))
        world.set_policies(*policies)
        got = world.matrix()
        want = {k: expected(policies, pods[k[0]], pods[k[1]], k[2], k[3]) for k in got}
        wrong = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
        assert wrong == {}, f"seed {seed}: {len(wrong)} of {len(got)} differ: {wrong}; {policies}"
        seen |= set(want.values())
    # The sets are not trivial: refusals of both kinds happened.
    assert seen == {"ok", "EPERM", "timeout"}
