"""`nodemesh agent` turns bad input into one clear line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodemesh.cmd.main import main


def test_unparseable_plan_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"frontends": [{"vip": 7}]}')
    assert main(["agent", "dump", f"--plan={plan}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nodemesh agent dump: {plan}:")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_missing_model_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "dump", f"--model-dir={tmp_path}/nope"]) == 2
    assert "--model-dir" in capsys.readouterr().err


def test_pin_dir_off_bpffs_is_a_missing_prerequisite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agent", "cleanup", f"--pin-dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "missing:" in err and "not on a BPF filesystem" in err and "fix:" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_zero_service_event_sample_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["agent", "datapath", f"--pin-dir={tmp_path}", "--service-events-sample-every=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--service-events-sample-every: must be at least 1" in err
    assert err.count("\n") == 1 and "Traceback" not in err
