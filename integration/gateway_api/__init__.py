"""Where the pinned Gateway API modules are (third_party/gateway-api/go.mod).

`go mod download -json` answers with each module's directory in the module
cache, fetching it (checked against go.sum) when it is not there yet.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

PIN_DIR = Path(__file__).resolve().parents[2] / "third_party" / "gateway-api"
MODULE = "sigs.k8s.io/gateway-api"
CONFORMANCE = "sigs.k8s.io/gateway-api/conformance"


@functools.cache
def module_dir(module: str = MODULE) -> Path:
    """The pinned `module`'s directory in the Go module cache."""
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    out = subprocess.run(
        ["go", "mod", "download", "-json", module],
        cwd=PIN_DIR,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(json.loads(out)["Dir"])


def crd_path(plural: str) -> Path:
    """A standard-channel CRD of the pinned release, e.g. "httproutes"."""
    name = f"gateway.networking.k8s.io_{plural}.yaml"
    return module_dir() / "config" / "crd" / "standard" / name


def mesh_tests_dir() -> Path:
    """The GAMMA conformance cases (Go + manifests) of the pinned release."""
    return module_dir(CONFORMANCE) / "tests" / "mesh"
