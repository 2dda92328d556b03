"""Go programs the tests and benches build from pinned modules.

Each program lives in a folder with its own go.mod/go.sum (pinned, fetched
from the Go module proxy) and a main.go. It is built on first use into a
cache keyed by those sources and the Go version, and never committed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path


class GoBuildError(RuntimeError):
    """Go is missing or the build failed; the message says how to fix it."""


def go_program(source: Path, name: str) -> Path:
    """The built binary of the Go program in `source`, called `name`."""
    go = shutil.which("go")
    if go is None:
        raise GoBuildError(
            f"building {name}: Go is not installed; run scripts/bootstrap.sh (installs golang-go)"
        )
    version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True)
    digest = hashlib.sha256(version.stdout.encode())
    for part in ("go.mod", "go.sum", "main.go"):
        digest.update((source / part).read_bytes())
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    out = Path(base) / "nodemesh" / "go" / f"{name}-{digest.hexdigest()[:16]}" / name
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    env = {**os.environ, "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "auto"}
    built = subprocess.run(
        [go, "build", "-o", str(tmp), "."], cwd=source, env=env, capture_output=True, text=True
    )
    if built.returncode != 0:
        last = (built.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise GoBuildError(
            f"building {name} in {source} failed: {last}; "
            f"retry with `cd {source} && go build .` to see the whole error"
        )
    tmp.replace(out)  # atomic: a concurrent run never sees half a binary
    return out
