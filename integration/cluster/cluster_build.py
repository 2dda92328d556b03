"""Builds the pinned Kubernetes control plane and etcd from upstream Go sources.

go.mod beside this file is the one source of truth for the versions: the
binaries land in ``${XDG_CACHE_HOME:-~/.cache}/nodemesh/k8s-<k8s>-etcd-<etcd>/bin``
so only the first run on a machine pays for the build, and a version bump in
go.mod builds into a fresh directory instead of mixing releases.

Run it as a script (``make test`` does; named cluster_build, not build,
so it never shadows or is shadowed by PyPA's `build` package): it builds what is missing and prints
how long that took. A missing or too old Go toolchain or a failed build ends
it with ONE line naming what is missing and the command that fixes it, so the
Kubernetes tests are never skipped silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GO_MOD = HERE / "go.mod"

# binary name -> Go package (relative to the module in this directory).
COMMANDS: dict[str, str] = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    "etcd": "./etcd",
    # client-go shared-informer program for bench/k8s_sync.py (same pins).
    "informer-sync": "./informer-sync",
}


class BuildError(Exception):
    """One line for the user: what is missing and the command that fixes it."""


def versions() -> tuple[str, str, str]:
    """(kubernetes, etcd, go) versions as go.mod pins them."""
    text = GO_MOD.read_text()

    def pin(pattern: str, what: str) -> str:
        found = re.search(pattern, text, re.MULTILINE)
        if not found:
            raise BuildError(
                f"{GO_MOD}: no {what} pin found; restore it with `git checkout {GO_MOD}`"
            )
        return found.group(1)

    return (
        pin(r"^\s*k8s\.io/kubernetes (v\S+)", "k8s.io/kubernetes"),
        pin(r"^\s*go\.etcd\.io/etcd/server/v3 (v\S+)", "go.etcd.io/etcd/server/v3"),
        pin(r"^go (\S+)", "go directive"),
    )


def cache_dir() -> Path:
    k8s, etcd, _ = versions()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nodemesh" / f"k8s-{k8s}-etcd-{etcd}" / "bin"


def missing(bin_dir: Path) -> list[str]:
    return [name for name in COMMANDS if not os.access(bin_dir / name, os.X_OK)]


def _go() -> str:
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None
    )
    _, _, need = versions()
    fix = (
        f"install Go >= {need}: unpack go{need}.linux-amd64.tar.gz into /usr/local/go"
        " and put /usr/local/go/bin on PATH"
    )
    if go is None:
        raise BuildError(f"cluster build: Go toolchain not found: {fix}")
    try:
        out = subprocess.run(
            [go, "env", "GOVERSION"], capture_output=True, text=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"cluster build: {go} does not run ({exc}): {fix}") from None
    have = out.stdout.strip().removeprefix("go")
    if _vtuple(have) < _vtuple(need):
        raise BuildError(f"cluster build: {go} is Go {have}, go.mod needs >= {need}: {fix}")
    return go


def _vtuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def build(names: list[str], bin_dir: Path) -> float:
    """Builds the named binaries into bin_dir; returns the seconds it took."""
    go = _go()
    env = dict(os.environ, GOFLAGS="-trimpath -mod=readonly", CGO_ENABLED="0", GOTOOLCHAIN="local")
    bin_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # One `go build` for all of them: packages shared between the binaries are
    # compiled once. Into a temp dir first so a killed build never leaves a
    # half-written binary that the next run would take as done.
    with tempfile.TemporaryDirectory(dir=bin_dir.parent, prefix=".build-") as tmp:
        cmd = [go, "build", "-ldflags=-s -w", "-o", tmp + "/", *(COMMANDS[n] for n in names)]
        log = Path(tmp) / "build.log"
        with log.open("w") as sink:
            done = subprocess.run(
                cmd, cwd=HERE, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False
            )
        if done.returncode != 0:
            tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
            raise BuildError(
                f"cluster build: `go build` of {', '.join(names)} failed ({tail[0]}): "
                f"rerun `cd {HERE} && go build -o {bin_dir}/ "
                f"{' '.join(COMMANDS[n] for n in names)}` to see all of it"
            )
        for name in names:
            os.replace(Path(tmp) / Path(COMMANDS[name]).name, bin_dir / name)
    return time.monotonic() - started


def cilium_crds() -> Path:
    """Cilium's own CRDs (cilium.io/v2), from the github.com/cilium/cilium
    module that cilium/go.mod pins: fetched into the module cache, not built."""
    go = _go()
    cmd = [go, "mod", "download", "-json", "github.com/cilium/cilium"]
    done = subprocess.run(cmd, cwd=HERE / "cilium", capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BuildError(
            f"cilium CRDs: `go mod download github.com/cilium/cilium` failed ({last}): "
            f"rerun it in {HERE / 'cilium'} with the Go module proxy reachable"
        )
    return Path(json.loads(done.stdout)["Dir"]) / "pkg/k8s/apis/cilium.io/client/crds/v2"


def ensure_built() -> Path:
    """The bin dir with every binary in it, building what is missing."""
    bin_dir = cache_dir()
    todo = missing(bin_dir)
    if todo:
        took = build(todo, bin_dir)
        print(
            f"cluster build: built {', '.join(todo)} into {bin_dir} in {took:.0f} s",
            file=sys.stderr,
        )
    return bin_dir


def main() -> int:
    try:
        bin_dir = cache_dir()
        if not missing(bin_dir):
            print(f"cluster build: all {len(COMMANDS)} binaries in {bin_dir}, nothing to build")
            return 0
        ensure_built()
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
