"""The Gateway API GAMMA conformance cases (v1.6.3), run on the real node Envoy.

Every `conformance/tests/mesh` case of the pinned module is either run here,
with its own manifests and its own expected request -> response outcomes
(read from the Go source, see mesh.py), or listed in NOT_RUN with the reason;
a case added upstream fails `test_every_case_is_run_or_explained` until it is
one or the other. docs/gateway-api.md reports the count.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nodemesh.cmd.demo.traffic import judge_split

from .mesh import MESH_NS, mesh_cases
from .world import check, world

pytestmark = pytest.mark.envoy

CASES = {c.short_name: c for c in mesh_cases()}
# Cases that cannot run here, with the reason (none at v1.6.3).
NOT_RUN: dict[str, str] = {}


def test_every_case_is_run_or_explained() -> None:
    assert len(CASES) == 22
    assert set(NOT_RUN) <= set(CASES)
    for name, case in CASES.items():
        assert case.requests, f"{name}: no expected requests read from its Go source"


@pytest.mark.parametrize("name", sorted(set(CASES) - set(NOT_RUN)))
async def test_mesh_case(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    async with world(case, tmp_path) as mesh:
        failures = []
        for index, (client_ns, expected) in enumerate(case.requests):
            answer = await mesh.request(client_ns, expected["Request"])
            for problem in check(expected, answer):
                label = expected.get("TestCaseName") or f"case {index}"
                failures.append(f"{label} {expected['Request']}: {problem}")
        assert not failures, "\n".join(failures)
        if case.weights:
            # The suite's weighted check, as the demo judges a split: each
            # backend's share within binomial tolerance of its weight.
            client_ns, expected = case.requests[0]
            counts: dict[str, int] = {}
            for _ in range(500):
                answer = await mesh.request(client_ns, expected["Request"])
                backend = "-".join(str(answer.echo.get("pod", "?")).split("-")[:2])
                counts[backend] = counts.get(backend, 0) + 1
            weights = {k: round(v * 1000) for k, v in case.weights.items()}
            verdicts = judge_split(weights, counts)
            assert all(v.within for v in verdicts), verdicts
            assert client_ns == MESH_NS
