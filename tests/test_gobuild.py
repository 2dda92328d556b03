"""The Go build helper says what is missing and how to fix it, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.gobuild import GoBuildError, go_program


def test_missing_go_names_the_program_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a real PATH without `go` on it
    with pytest.raises(
        GoBuildError, match=r"building peer: Go is not installed; run scripts/bootstrap.sh"
    ):
        go_program(tmp_path, "peer")


def test_a_failed_build_names_the_folder_and_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tmp_path = tmp_path / "src"
    tmp_path.mkdir()
    (tmp_path / "go.mod").write_text("module example.com/broken\n\ngo 1.22\n")
    (tmp_path / "go.sum").write_text("")
    (tmp_path / "main.go").write_text("package main\n\nfunc main() { undefined() }\n")
    with pytest.raises(GoBuildError) as raised:
        go_program(tmp_path, "broken")
    message = str(raised.value)
    assert "\n" not in message
    assert f"building broken in {tmp_path} failed" in message
    assert "undefined" in message
    assert f"cd {tmp_path} && go build ." in message
