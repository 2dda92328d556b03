"""policy_apply diffs a plan against what this process last wrote, not a
read of every pinned entry, but only while those are the same maps: pins
made again (a cleanup and a fresh load) are written in full, and what
lands in them is the whole plan."""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh.ebpf import loader, pinned, policy_apply, policy_incremental
from nodemesh.model.store import MeshStore

from .conftest import Datapath
from .node import MeshNode

pytestmark = pytest.mark.privileged


def _objects(app_of_b: str) -> list[dict[str, Any]]:
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"nodeName": "node-1"},
            "status": {"podIP": ip, "phase": "Running"},
        }
        for name, ip, app in (
            ("a", "10.0.1.2", "web"),
            ("b", "10.0.2.2", app_of_b),
            ("c", "10.0.3.2", "db"),
            ("d", "10.0.4.2", "cli"),
        )
    ]
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cli"}}}]}],
        },
    }
    return [*pods, policy]


def _pinned(datapath: Datapath) -> dict[str, set[tuple[int, ...]]]:
    out = {}
    for name, spec in policy_apply.SPECS.items():
        with pinned.open_map(datapath.config.maps_dir, spec) as m:
            out[name] = {k + v.as_tuple() for k, (_, v) in m.items().items()}
    return out


def test_recreated_maps_are_written_in_full(node: MeshNode, datapath: Datapath) -> None:
    for name in "abcd":
        node.add_pod("default", name)
    store = MeshStore()
    for obj in _objects("cli"):
        store.apply("t", obj)
    compiler = policy_incremental.Compiler()
    plan = compiler.plan(store.build(), "node-1", ["10.0.0.1"])
    maps = datapath.config.maps_dir
    first = policy_apply.apply(plan, maps, datapath.pods)
    assert first.writes > 0 and first.unresolved == ()
    want = _pinned(datapath)
    assert policy_apply.apply(plan, maps, datapath.pods).writes == 0

    # b relabelled onto labels c has (the identities stay): only its
    # ipcache entry and its endpoint change.
    store.apply("t", _objects("db")[1])
    relabelled = compiler.plan(store.build(), "node-1", ["10.0.0.1"])
    assert compiler.incremental == 1
    assert policy_apply.apply(relabelled, maps, datapath.pods).writes == 2
    assert policy_apply.apply(plan, maps, datapath.pods).writes == 2
    assert _pinned(datapath) == want

    # New maps behind the same pin paths: nothing of the old copy is trusted.
    loader.cleanup(datapath.config)
    datapath.load()
    assert _pinned(datapath) == {"ipcache": set(), "policy": set(), "endpoints": set()}
    again = policy_apply.apply(plan, maps, datapath.pods)
    assert again.writes == first.writes
    assert _pinned(datapath) == want
