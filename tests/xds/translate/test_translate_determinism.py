"""The same model encodes to the same bytes in every process (restarts,
replicas): also for user resources whose embedded messages hold maps, which
protobuf's JSON parser packs in a per-process order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# The script imports tests.xds.translate from the repository root.
ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import hashlib
from tests.xds.translate import translate_models as m
from nodemesh.xds.translate import CLUSTER, LISTENER, ROUTE, encode, translate
from dataclasses import replace
import copy

listener = copy.deepcopy(m.OWN_LISTENER)
hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
policies = {
    f"policy-{i}": {"permissions": [{"any": True}], "principals": [{"any": True}]}
    for i in range(40)
}
rbac = {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"policies": policies}}
hcm["http_filters"].insert(0, {"name": "envoy.filters.http.rbac", "typed_config": rbac})
config = m.envoy_config(m.OWN_REF, [(LISTENER, listener), (ROUTE, m.OWN_ROUTE),
                                    (CLUSTER, m.OWN_CLUSTER)], services=[m.CART])
model = replace(m.own_listener_model(), envoy_configs=(config,))
translation = translate(model)
assert not translation.errors, translation.errors
digest = hashlib.sha256()
for url in sorted(translation.resources):
    for name in sorted(translation.resources[url]):
        digest.update(encode(translation.resources[url][name]))
print(digest.hexdigest())
"""


def _digest() -> str:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def test_same_bytes_in_separate_processes() -> None:
    digests = {_digest() for _ in range(4)}
    assert len(digests) == 1
