"""Compiles the BPF C sources with clang into a cache keyed by their content.

Objects are never committed: the first load on a machine compiles them (about
a second per object) and later loads reuse the cached file. The key covers
every source and header plus the flags, so an edited header recompiles.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from nodemesh.ebpf.errors import BuildError, PrerequisiteMissing

BPF_DIR = Path(__file__).parent / "bpf"
# One object per hook family; all share the pinned maps of bpf/lib/maps.h.
OBJECTS: tuple[str, ...] = ("nm_sock", "nm_sock6", "nm_sockops", "nm_sockopt", "nm_policy")


def _multiarch_include() -> str:
    gcc = shutil.which("gcc")
    if gcc:
        arch = subprocess.run(
            [gcc, "-print-multiarch"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if arch:
            return f"/usr/include/{arch}"
    return f"/usr/include/{os.uname().machine}-linux-gnu"


def cflags() -> list[str]:
    # asm/types.h lives in the multiarch include dir, which -target bpf omits.
    return ["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", f"-I{_multiarch_include()}"]


def source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(BPF_DIR.rglob("*")):
        if path.suffix in (".c", ".h"):
            h.update(str(path.relative_to(BPF_DIR)).encode())
            h.update(path.read_bytes())
    h.update(" ".join(cflags()).encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("NODEMESH_BPF_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nodemesh" / "bpf"


def _compile(name: str, out: Path) -> None:
    clang = shutil.which("clang")
    if clang is None:
        raise PrerequisiteMissing(
            "clang is not installed (it compiles the BPF programs)",
            "install the Debian packages clang, llvm and libbpf-dev (scripts/bootstrap.sh does)",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".o.tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    cmd = [clang, *cflags(), "-c", str(BPF_DIR / f"{name}.c"), "-o", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp_path.unlink(missing_ok=True)
        raise BuildError(f"clang failed on {name}.c:\n{proc.stderr.strip()}")
    # rename is atomic, so a concurrent load never sees half an object.
    tmp_path.replace(out)


def build_objects() -> dict[str, Path]:
    """Object name -> path of its compiled .o, compiling what is missing."""
    where = cache_dir() / source_digest()
    objects: dict[str, Path] = {}
    for name in OBJECTS:
        out = where / f"{name}.o"
        if not out.exists():
            _compile(name, out)
        objects[name] = out
    return objects
