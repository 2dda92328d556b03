"""Any malformed object gets a ParseError, never another exception.

Seeded random mutations of real manifests (the canary example plus a Pod and
a CNP in Cilium's own schema): a key dropped, or a value swapped for one of
another type, anywhere in the tree.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.model import parse
from nodemesh.model.errors import ParseError
from nodemesh.model.objects import Kind, ObjectRef
from nodemesh.model.parse import ParseResult, parse_object
from nodemesh.model.store import MeshStore

CANARY = Path(__file__).resolve().parents[2] / "examples" / "canary"
EXTRA = """
apiVersion: v1
kind: Pod
metadata: {name: curl, labels: {app: curl}}
spec: {nodeName: n1}
status: {phase: Running, podIPs: [{ip: 10.0.0.5}]}
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector:
    matchExpressions: [{key: app, operator: In, values: [curl]}]
  egress:
  - toServices: [{k8sService: {serviceName: web, namespace: shop}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/a.*", headerMatches: [{name: X, value: "1"}]}]
"""
ODD_VALUES: list[Any] = [None, 0, -1, 70000, True, "", "x", "::1", [], [1], {}, {"a": 1}, 1.5]


def manifests() -> list[dict[str, Any]]:
    docs = [d for p in sorted(CANARY.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    return docs + list(yaml.safe_load_all(EXTRA))


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*prefix, index))
    return found


def mutate(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    path = rng.choice(paths(out))
    parent: Any = out
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_mutated_manifests_parse_or_fail_cleanly(seed: int) -> None:
    rng = random.Random(seed)
    docs = manifests()
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(600):
        raw = mutate(rng.choice(docs), rng)
        try:
            result = parse_object(raw)
        except ParseError as exc:
            assert exc.reason, raw
            outcomes["refused"] += 1
        else:
            assert isinstance(result, ParseResult)
            outcomes["parsed"] += 1
    # Both happen: the mutations are neither all harmless nor all fatal.
    assert outcomes["parsed"] and outcomes["refused"]


@pytest.mark.parametrize("seed", range(4))
def test_store_builds_whatever_mix_of_mutations_it_gets(seed: int) -> None:
    rng = random.Random(1000 + seed)
    docs = manifests()
    store = MeshStore()
    for _ in range(40):
        batch = [mutate(d, rng) if rng.random() < 0.5 else d for d in docs]
        store.replace_all("files", batch)
        model = store.build()
        assert all(e.reason for e in model.errors)


def test_endpoint_fast_path_agrees_with_the_careful_one() -> None:
    # The fast path reads plain dicts for speed; the careful one goes through
    # Fields. On any endpoint, both must give the same Endpoint or both refuse.
    ref = ObjectRef(Kind.ENDPOINT_SLICE, "shop", "s")
    base: dict[str, Any] = {
        "addresses": ["10.0.0.1"],
        "conditions": {"ready": True, "serving": True, "terminating": False},
        "nodeName": "n1",
        "zone": "z",
        "targetRef": {"kind": "Pod", "name": "p"},
    }
    rng = random.Random(5)
    for _ in range(3000):
        entry = mutate(base, rng) if rng.random() < 0.9 else mutate(mutate(base, rng), rng)
        for address_type in ("IPv4", "IPv6", "FQDN"):
            outcomes: list[object] = []
            for reader in (parse._endpoint, parse._endpoint_slow):
                try:
                    outcomes.append(reader(ref, 0, entry, address_type))
                except ParseError as exc:
                    outcomes.append(exc.field)
            assert outcomes[0] == outcomes[1], (entry, address_type)
