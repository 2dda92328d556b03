"""The CRDs in deploy/crds/ are the pinned Gateway API release's, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import crd_path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "crds"


@pytest.mark.parametrize("plural", ["httproutes", "grpcroutes", "referencegrants"])
def test_vendored_crd_is_the_pinned_one(plural: str) -> None:
    name = f"gateway.networking.k8s.io_{plural}.yaml"
    assert (DEPLOY / name).read_bytes() == crd_path(plural).read_bytes()
    assert "gateway.networking.k8s.io/bundle-version: v1.6.3" in (DEPLOY / name).read_text()
