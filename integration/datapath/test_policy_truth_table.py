"""Random NetworkPolicy sets against an independent reference evaluator.

The evaluator below is written from the Kubernetes NetworkPolicy
documentation (https://kubernetes.io/docs/concepts/services-networking/network-policies/),
not from nodemesh's code: a pod is isolated for a direction when a policy
whose podSelector matches it (in its namespace) lists that policyType; an
isolated pod's connection is allowed when any such policy has a rule whose
peers (empty: all) and ports (empty: all) both match; a connection needs
both the client's egress and the server's ingress; replies are allowed.
Named ports are the destination pod's container port names.

Every (client, server, port) of the nine pods is tried for real (TCP and
UDP); an egress refusal shows as EPERM at connect()/sendto(), an ingress
drop as a timeout.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from .conftest import Datapath
from .node import MeshNode
from .policy_world import NAMESPACE_LABELS, PolicyWorld

pytestmark = pytest.mark.privileged

CONTAINER_PORTS = {"http": (80, "tcp"), "alt": (8080, "tcp"), "dns": (53, "udp")}
APPS = ("web", "api", "db", "tool", "mon", "dns")


# -- the reference evaluator (from the Kubernetes docs) ------------------------


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _ns_labels(ns: str) -> dict[str, str]:
    return {**NAMESPACE_LABELS[ns], "kubernetes.io/metadata.name": ns}


def _peer_matches(peer: dict[str, Any], policy_ns: str, pod: tuple[str, dict[str, str]]) -> bool:
    ns, labels = pod
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], _ns_labels(ns)):
            return False
    elif ns != policy_ns:
        return False  # a podSelector alone means the policy's namespace
    return _selects(peer.get("podSelector"), labels)


def _port_matches(entry: dict[str, Any], port: int, kind: str) -> bool:
    if entry.get("protocol", "TCP").lower() != kind:
        return False
    want = entry.get("port")
    if want is None:
        return True
    if isinstance(want, str):
        return CONTAINER_PORTS.get(want) == (port, kind)
    end: int = entry.get("endPort", want)
    return bool(want <= port <= end)


def _types(spec: dict[str, Any]) -> set[str]:
    if "policyTypes" in spec:
        return set(spec["policyTypes"])
    return {"Ingress"} | ({"Egress"} if "egress" in spec else set())


def _allowed(
    policies: list[dict[str, Any]],
    direction: str,
    subject: tuple[str, dict[str, str]],
    peer: tuple[str, dict[str, str]],
    port: int,
    kind: str,
) -> bool:
    isolated = False
    for p in policies:
        ns, spec = p["metadata"]["namespace"], p["spec"]
        if ns != subject[0] or not _selects(spec.get("podSelector"), subject[1]):
            continue
        if direction.capitalize() not in _types(spec):
            continue
        isolated = True
        for rule in spec.get(direction) or []:
            peers = rule.get("from" if direction == "ingress" else "to") or []
            ports = rule.get("ports") or []
            if (not peers or any(_peer_matches(x, ns, peer) for x in peers)) and (
                not ports or any(_port_matches(x, port, kind) for x in ports)
            ):
                return True
    return not isolated


def expected(
    policies: list[dict[str, Any]],
    client: tuple[str, dict[str, str]],
    server: tuple[str, dict[str, str]],
    port: int,
    kind: str,
) -> str:
    if not _allowed(policies, "egress", client, server, port, kind):
        return "EPERM"
    if not _allowed(policies, "ingress", server, client, port, kind):
        return "timeout"
    return "ok"


# -- random policies ------------------------------------------------------------


def _selector(rng: random.Random) -> dict[str, Any]:
    choice = rng.randrange(4)
    if choice == 0:
        return {}
    if choice == 1:
        return {"matchLabels": {"app": rng.choice(APPS)}}
    if choice == 2:
        return {
            "matchExpressions": [{"key": "app", "operator": "In", "values": rng.sample(APPS, 2)}]
        }
    return {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": [rng.choice(APPS)]}]}


def _peer(rng: random.Random) -> dict[str, Any]:
    choice = rng.randrange(3)
    env = {"matchLabels": {"env": rng.choice(list(NAMESPACE_LABELS))}}
    if choice == 0:
        return {"podSelector": _selector(rng)}
    if choice == 1:
        return {"namespaceSelector": env}
    return {"namespaceSelector": env, "podSelector": _selector(rng)}


def _ports(rng: random.Random) -> list[dict[str, Any]]:
    options: list[dict[str, Any]] = [
        {"port": 80},
        {"port": "alt"},
        {"port": "dns", "protocol": "UDP"},
        {"port": 53, "protocol": "UDP"},
        {"port": 8000, "endPort": 8100},
        {"protocol": "UDP"},
    ]
    return rng.sample(options, rng.randrange(0, 3))


def _rule(rng: random.Random, peers_key: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if rng.random() < 0.8:
        rule[peers_key] = [_peer(rng) for _ in range(rng.randrange(1, 3))]
    ports = _ports(rng)
    if ports:
        rule["ports"] = ports
    return rule


def random_policies(rng: random.Random, count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        spec: dict[str, Any] = {"podSelector": _selector(rng)}
        types = rng.choice([["Ingress"], ["Egress"], ["Ingress", "Egress"], None])
        if types is not None:
            spec["policyTypes"] = types
        if types is None or "Ingress" in types:
            spec["ingress"] = [_rule(rng, "from") for _ in range(rng.randrange(0, 3))]
        if types is not None and "Egress" in types:
            spec["egress"] = [_rule(rng, "to") for _ in range(rng.randrange(0, 3))]
        out.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": f"p{i}", "namespace": rng.choice(list(NAMESPACE_LABELS))},
                "spec": spec,
            }
        )
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_policies_match_the_reference(node: MeshNode, datapath: Datapath, seed: int) -> None:
    world = PolicyWorld(node)
    world.build()
    rng = random.Random(seed)
    pods = {p.key: (p.namespace, world.labels[p.key]) for p in world.pods}
    for _round in range(2):
        policies = random_policies(rng, rng.randrange(2, 6))
        world.set_policies(*policies)
        got = world.matrix()
        want = {k: expected(policies, pods[k[0]], pods[k[1]], k[2], k[3]) for k in got}
        wrong = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
        assert wrong == {}, (
            f"seed {seed}: {len(wrong)} of {len(got)} differ: {wrong}; policies: {policies}"
        )
        # The sets are not trivial: some pairs are refused each way.
        assert {"ok"} < set(want.values()) or len(policies) == 0
