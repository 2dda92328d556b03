"""`pip install .` gives a working nodemesh, and requirements.lock matches pyproject.toml.

The wheel test builds from a clean copy of the tree (tracked and untracked
files, none that git ignores: no .venv, no nodemesh/_gen), the way a clean
clone would, in a venv holding only [build-system].requires (what build
isolation gives), then installs it into a fresh venv with only its runtime and
`demo` dependencies and runs `nodemesh demo --rounds 1` and `nodemesh agent
--help` there, away from the checkout.

Every package comes from requirements.lock, hash-checked, out of uv's cache
(`--offline`: scripts/bootstrap.sh filled it when it synced the lock; tests
reach no registry). The dependency closures are walked with the metadata of
the dev venv, which was synced from the same lock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
UV = Path(sys.executable).parent / "uv"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lock_blocks() -> dict[str, tuple[str, str]]:
    """name -> (version, the lock's text for it: pin, marker and hashes)."""
    blocks: dict[str, tuple[str, str]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            pin = line.split(";")[0].rstrip(" \\")
            raw, _, version = pin.partition("==")
            name = canonicalize_name(raw)
            blocks[name] = (version, line + "\n")
        elif line.startswith("    --hash") and name:
            version, text = blocks[name]
            blocks[name] = (version, text + line + "\n")
    return blocks


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements pull in on this interpreter, extras
    followed, by the installed (locked) packages' metadata."""
    names: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, str]] = [(r, "") for r in requirements]
    while todo:
        spec, extra = todo.pop()
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in visited:
            continue
        visited.add(key)
        names.add(key[0])
        for sub in metadata.requires(req.name) or []:
            todo.extend((sub, e) for e in ("", *sorted(req.extras)))
    return names


def _locked_subset(requirements: list[str], out: Path) -> Path:
    blocks = _lock_blocks()
    needed = _closure(requirements)
    missing = sorted(needed - blocks.keys())
    assert not missing, f"requirements.lock lacks {missing}: run `make lock`"
    out.write_text("".join(blocks[n][1] for n in sorted(needed)))
    return out


def _run(*argv: str | Path, cwd: Path, timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"{[str(a) for a in argv[:3]]} exit {done.returncode}:\n{done.stderr[-3000:]}"
    )
    return done.stdout


def _venv(path: Path, requirements: Path) -> Path:
    _run(UV, "venv", "-q", "--python", sys.executable, path, cwd=path.parent)
    python = path / "bin" / "python"
    sync = ("pip", "sync", "-q", "--offline", "--require-hashes", "--python", python)
    # Offline: a package missing from uv's cache means the dev venv was not
    # synced from this lock by scripts/bootstrap.sh (`make deps` does it).
    _run(UV, *sync, requirements, cwd=path.parent)
    return python


def _clean_copy(dest: Path) -> Path:
    """The tree as a clean clone would have it, plus uncommitted edits."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():  # a deleted, not yet committed file is still listed
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_lock_pins_every_declared_requirement_within_its_bounds() -> None:
    blocks = _lock_blocks()
    project = PYPROJECT["project"]
    declared = [*project["dependencies"]]
    for extra in ("dev", "demo"):
        declared += project["optional-dependencies"][extra]
    for spec in declared:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in blocks, f"{name} is not in requirements.lock: run `make lock`"
        version, text = blocks[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} vs {spec}"
        assert "--hash=sha256:" in text, name


def test_build_requirements_are_pinned_to_the_locked_versions() -> None:
    blocks = _lock_blocks()
    for spec in PYPROJECT["build-system"]["requires"]:
        req = Requirement(spec)
        (pin,) = req.specifier
        assert pin.operator == "==", f"{spec}: pin it exactly (it fixes the gencode)"
        assert blocks[canonicalize_name(req.name)][0] == pin.version, f"{spec} vs the lock"


@pytest.mark.envoy
@pytest.mark.slow
def test_wheel_from_a_clean_tree_installs_a_working_nodemesh(tmp_path: Path) -> None:
    src = _clean_copy(tmp_path / "src")
    build_python = _venv(
        tmp_path / "build-env",
        _locked_subset(PYPROJECT["build-system"]["requires"], tmp_path / "build.txt"),
    )
    build = ("build", "-q", "--offline", "--wheel", "--no-build-isolation")
    _run(UV, *build, "--python", build_python, "--out-dir", tmp_path / "dist", src, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("nodemesh-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for member in (
        "nodemesh/_gen/nodemesh/v1/datapath_pb2.py",
        "nodemesh/_assets/envoy/bootstrap.yaml",
        "nodemesh/_assets/examples/canary/traffic-split.yaml",
        "nodemesh/ebpf/bpf/lib/maps.h",
    ):
        assert member in shipped, member

    project = PYPROJECT["project"]
    runtime = [*project["dependencies"], *project["optional-dependencies"]["demo"]]
    python = _venv(tmp_path / "venv", _locked_subset(runtime, tmp_path / "runtime.txt"))
    install = ("pip", "install", "-q", "--offline", "--no-deps", "--python", python)
    _run(UV, *install, wheel, cwd=tmp_path)

    # cwd outside the checkout: nothing can be imported from the source tree.
    nodemesh = python.parent / "nodemesh"
    assert _run(nodemesh, "agent", "--help", cwd=tmp_path).startswith("usage: nodemesh agent")
    demo = _run(nodemesh, "demo", "--rounds", "1", cwd=tmp_path)
    assert "result: split within tolerance" in demo
    # The installed wheel's flows: generated protos that import each other, and
    # the demo's closing L7 flows counted from Envoy's access log.
    assert "split in the flows held: default/httpbin-v1" in demo
    page = "from importlib import resources; print(len((resources.files('nodemesh.flows')"
    page += " / 'web' / 'app.js').read_bytes()))"
    assert int(_run(python, "-c", page, cwd=tmp_path)) > 0
    show = "from nodemesh import assets; print(assets.asset_root())"
    where = _run(python, "-c", show, cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(tmp_path / "venv"), where
