"""Fixtures every unit test shares."""

from __future__ import annotations

import pytest

from nodemesh.cmd import main as cmd_main


@pytest.fixture(autouse=True)
def keep_test_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # `nodemesh.cmd.main.main` configures structlog process-wide (level,
    # renderer); called in the test process, that would change what every
    # later test logs.
    monkeypatch.setattr(cmd_main, "configure_logging", lambda *a, **k: None)
