"""Golden tests: a model in, the Envoy resources (as JSON) out.

Set REGEN=1 to rewrite the golden files after an intended change; without it
any difference fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.xds.translate.translate_cases import CASES, dumps, render

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("case", sorted(CASES))
def test_translation_matches_golden(case: str) -> None:
    rendered = render(CASES[case]())
    path = GOLDEN / f"{case}.json"
    if os.environ.get("REGEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(dumps(rendered))
    assert path.exists(), f"no golden file {path.name}: run with REGEN=1"
    assert rendered == json.loads(path.read_text())
