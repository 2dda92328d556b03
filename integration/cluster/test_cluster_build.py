"""cluster_build.py's promise to a user without a usable Go: one line naming
what is missing and the fix, exit 1, never a silent skip. A fake `go` on PATH
stands in for a broken or too old toolchain (a fault the real one cannot be
made to have); an empty cache dir makes the build needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BUILD = Path(__file__).with_name("cluster_build.py")


@pytest.mark.parametrize(
    ("script", "said"),
    [
        ("echo go1.22.0", "is Go 1.22.0, go.mod needs >= 1.26.0"),
        ("exit 3", "does not run"),
    ],
)
def test_unusable_go_stops_with_one_line_and_the_fix(
    tmp_path: Path, script: str, said: str
) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "go").write_text(f"#!/bin/sh\n{script}\n")
    (fake / "go").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:/usr/bin:/bin", XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, str(BUILD)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert said in lines[0] and "install Go >= 1.26.0" in lines[0], lines[0]


def test_present_binaries_are_not_rebuilt() -> None:
    """The second run on a machine: `make test` has just built everything."""
    done = subprocess.run(
        [sys.executable, str(BUILD)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "nothing to build" in done.stdout
