"""Manifest fuzzing (issue 10): hypothesis drives mutations of the canary and
test fixtures through the real file source, store, admission and translator.

Asserted for every example: nothing raises; every rejection names the
object, the field and the reason; no document vanishes without a word in
status; a refused edit leaves the canary's listener serving. A sample of
the accepted translations (every translation when NODEMESH_FUZZ_ENVOY=all)
is judged by the real Envoy (`--mode validate`) and must be accepted.

`make test` runs a seeded, bounded number of examples; `make fuzz` runs many
more (NODEMESH_FUZZ_EXAMPLES, default there 2000) with fresh randomness.
"""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.manifest_fuzz import base_files, envoy_accepts, mutate, run_case

EXAMPLES = int(os.environ.get("NODEMESH_FUZZ_EXAMPLES", "25"))
LONG = "NODEMESH_FUZZ_EXAMPLES" in os.environ
ENVOY_ALL = os.environ.get("NODEMESH_FUZZ_ENVOY") == "all"
# Envoy takes ~0.3 s a run: judge one translation in this many in `make test`.
ENVOY_EVERY = 1 if ENVOY_ALL else 8

_judged: dict[str, int] = {"count": 0}


@pytest.mark.envoy
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), edits=st.integers(1, 3))
def test_mutated_manifests_are_admitted_soundly(seed: int, edits: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    files = copy.deepcopy(base_files())
    what = "; ".join(mutate(files, rng)[1] for _ in range(edits))
    outcome = run_case(files, what)
    assert outcome.unnamed == [], what
    assert outcome.dropped == [], what
    assert not outcome.outage, what
    _judged["count"] += 1
    if _judged["count"] % ENVOY_EVERY == 1 or ENVOY_EVERY == 1:
        accepted, said = envoy_accepts(outcome.translation, tmp_path / "fuzz.json")
        assert accepted, f"{what}: Envoy says {said}"
