"""MeshModel.version: a content hash, the same in every process for equal input."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from nodemesh.model.digest import object_digest
from nodemesh.model.objects import Endpoint, EndpointSlice, Service
from nodemesh.model.parse import parse_object
from nodemesh.model.store import MeshStore

ROOT = Path(__file__).resolve().parents[2]
CANARY = ROOT / "examples" / "canary"

PRINT_VERSION = """
import sys, yaml
from pathlib import Path
from nodemesh.model.store import MeshStore
store = MeshStore()
for path in sorted(Path(sys.argv[1]).glob("*.yaml"), reverse=True):
    for doc in yaml.safe_load_all(path.read_text()):
        store.apply(path.name, doc)
print(store.build().version)
"""


def canary_version() -> str:
    store = MeshStore()
    for path in sorted(CANARY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            store.apply("files", doc)
    return store.build().version


def test_version_is_the_same_in_fresh_processes() -> None:
    # Different hash seeds stand in for restarts and other replicas; the
    # script also applies the files in the other order, under other sources.
    expected = canary_version()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", PRINT_VERSION, str(CANARY)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert out.stdout.split()[-1] == expected


def slice_() -> EndpointSlice:
    raw = next(
        d
        for d in yaml.safe_load_all((CANARY / "local-backends.yaml").read_text())
        if d["kind"] == "EndpointSlice"
    )
    obj = parse_object(raw).obj
    assert isinstance(obj, EndpointSlice)
    return obj


def test_every_endpoint_field_counts() -> None:
    base = slice_()
    (endpoint,) = base.endpoints
    variants = [
        replace(endpoint, addresses=("127.0.0.2",)),
        replace(endpoint, ready=False),
        replace(endpoint, serving=False),
        replace(endpoint, terminating=True),
        replace(endpoint, node_name="n1"),
        replace(endpoint, pod_name="p"),
        replace(endpoint, zone="z"),
    ]
    digests = {object_digest(replace(base, endpoints=(v,))) for v in variants}
    digests.add(object_digest(base))
    assert len(digests) == len(variants) + 1
    assert object_digest(replace(base, service_name="other")) != object_digest(base)
    copy = replace(
        base, endpoints=(Endpoint(**{f: getattr(endpoint, f) for f in endpoint.__slots__}),)
    )
    assert object_digest(copy) == object_digest(base)


def test_type_of_value_counts() -> None:
    raw = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {}}
    named = {**raw, "spec": {"ports": [{"port": 80, "targetPort": "80"}]}}
    numbered = {**raw, "spec": {"ports": [{"port": 80, "targetPort": 80}]}}
    one, two = parse_object(named).obj, parse_object(numbered).obj
    assert isinstance(one, Service) and isinstance(two, Service)
    assert object_digest(one) != object_digest(two)
