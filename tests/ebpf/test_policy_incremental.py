"""policy_incremental.Compiler: one model after another gives exactly the
plan a compile from nothing gives, whether it patched the previous plan
(a relabel onto existing labels, an IP change, a pod going Succeeded) or
fell back to a full compile (a new identity, a policy change)."""

from __future__ import annotations

import random
from typing import Any

from nodemesh.ebpf import policy_incremental, policy_plan
from nodemesh.model.store import MeshStore
from tests.ebpf.test_policy_plan import knp

APPS = ("web", "cli", "db", "cache")
POLICIES = (
    knp("web-from-cli", {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cli"}}}],
                     "ports": [{"port": 8080}]}],
    }),
    knp("db-egress", {
        "podSelector": {"matchLabels": {"app": "db"}},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "cache"}}}]}],
    }),
)  # fmt: skip


def pod(
    name: str, ip: str, app: str, node: str = "n1", phase: str = "Running", ns: str = "a"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node},
        "status": {"podIP": ip, "phase": phase},
    }


def base_store(pods: int) -> tuple[MeshStore, dict[str, dict[str, Any]]]:
    store = MeshStore()
    objs = {}
    for i in range(pods):
        objs[f"p{i}"] = pod(f"p{i}", f"10.1.0.{i + 1}", APPS[i % len(APPS)], f"n{1 + i % 2}")
    for obj in (*objs.values(), *POLICIES):
        store.apply("t", obj)
    return store, objs


def test_relabel_is_patched_and_equals_a_full_compile() -> None:
    store, _ = base_store(12)
    compiler = policy_incremental.Compiler()
    first = compiler.plan(store.build(), "n1", ["10.0.0.1"])
    store.apply("t", pod("p0", "10.1.0.1", "cli"))  # web -> cli: both exist
    model = store.build()
    got = compiler.plan(model, "n1", ["10.0.0.1"])
    assert compiler.incremental == 1
    assert got == policy_plan.plan(model, "n1", ["10.0.0.1"])
    assert got.entries is first.entries  # the applier skips an unchanged policy map
    assert got.endpoints["a/p0"].identity != first.endpoints["a/p0"].identity


def test_random_changes_always_equal_a_full_compile() -> None:
    rng = random.Random(12)
    store, objs = base_store(16)
    compiler = policy_incremental.Compiler()
    compiler.plan(store.build(), "n1", ["10.0.0.1"])
    for step in range(120):
        name = f"p{rng.randrange(16)}"
        old = objs[name]
        change = rng.choice(["relabel", "relabel", "ip", "phase", "new-app", "policy"])
        if change == "policy":
            store.apply(
                "t", POLICIES[step % 2] if step % 3 else knp(f"x{step}", {"podSelector": {}})
            )
        else:
            app = old["metadata"]["labels"]["app"]
            ip = old["status"]["podIP"]
            phase = "Running"
            if change == "relabel":
                app = rng.choice(APPS)
            elif change == "new-app":
                app = f"new{step}"
            elif change == "ip":
                ip = f"10.2.{step}.{rng.randrange(1, 250)}"
            else:
                phase = rng.choice(["Succeeded", "Running"])
            objs[name] = pod(name, ip, app, old["spec"]["nodeName"], phase)
            store.apply("t", objs[name])
        model = store.build()
        assert compiler.plan(model, "n1", ["10.0.0.1"]) == policy_plan.plan(
            model, "n1", ["10.0.0.1"]
        ), f"step {step}: {change} of {name}"
    # Both paths ran: most steps patch, new identities and policies recompile.
    assert 30 < compiler.incremental < 120
