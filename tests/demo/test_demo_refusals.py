"""`nodemesh demo` refuses bad input with one line naming the flag, before
starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodemesh.cmd.main import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--weights", "a"], "--weights: 'a' is not a comma-separated list of integers"),
        (["--weights", "0,0"], "--weights: '0,0' needs non-negative weights with a positive sum"),
        (["--weights", "1,2,3"], "--weights: 3 weights given, but the route splits across 2"),
        (["--source-dir", "/nonexistent"], "--source-dir: /nonexistent is not a directory"),
        (["--example", "nope"], "--example: no example 'nope' (there are: canary, "),
    ],
)
def test_refusals(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nodemesh demo: " + message), err
    assert "Traceback" not in err


def test_source_dir_and_example_together_are_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--example", "canary", "--source-dir", "."]) == 2
    err = capsys.readouterr().err
    assert "give --source-dir or --example, not both" in err and "Traceback" not in err


def test_a_directory_without_the_canary_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--source-dir", str(tmp_path)]) == 1
    assert "Service default/httpbin is not redirected to Envoy" in capsys.readouterr().err
