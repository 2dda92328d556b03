"""Snapshot tuples stay in (namespace, name) order through any mix of changes,
small ones applied in place and bursts re-sorted."""

from __future__ import annotations

import random
from typing import Any

from nodemesh.model.store import MeshStore
from tests.support import factory


def pod(namespace: str, name: str, ip: str) -> dict[str, Any]:
    return factory.k8s_pod(name, namespace, ip=ip, phase=None)


def test_pods_stay_ordered_through_bursts_and_single_changes() -> None:
    rng = random.Random(3)
    store = MeshStore()
    expected: dict[tuple[str, str], str] = {}
    for round_ in range(25):
        # Alternate small edits with bursts bigger than the in-place limit.
        changes = rng.choice([1, 3, 40, 300])
        for _ in range(changes):
            key = (f"ns{rng.randrange(7)}", f"p{rng.randrange(900)}")
            if key in expected and rng.random() < 0.4:
                store.delete("test", "Pod", *key)
                del expected[key]
            else:
                ip = f"10.0.{round_}.{rng.randrange(250)}"
                store.apply("test", pod(*key, ip))
                expected[key] = ip
        model = store.build()
        got = [((p.ref.namespace, p.ref.name), p.ips[0]) for p in model.pods]
        assert got == sorted(expected.items())
