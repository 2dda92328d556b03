"""Build hook: what a wheel needs beyond the Python sources (metadata is in pyproject.toml).

`build_py` also
- compiles proto/ with grpcio-tools' protoc into `nodemesh/_gen/` (importable
  as `nodemesh._gen.<proto package>`), so `pip install .` from a clean clone
  has the generated code; grpcio-tools is pinned in [build-system].requires,
  which fixes the gencode version and so the protobuf runtime it needs;
- copies the repository's `envoy/bootstrap.yaml` and `examples/` into
  `nodemesh/_assets/`, where `nodemesh.assets` finds them in an installed
  package. They stay at the repository root (a top-level `envoy` directory
  must not become a Python package: it would shadow Envoy's protos).

In an editable install (`editable_mode`) the protos are generated in place
(nodemesh/_gen, gitignored) and nothing is copied: `nodemesh.assets` falls
back to the repository root.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "proto"
# Repository files shipped as package data, as (source, destination below nodemesh/_assets).
ASSETS = (("envoy/bootstrap.yaml", "envoy/bootstrap.yaml"), ("examples", "examples"))


def compile_protos(out_dir: Path) -> list[Path]:
    """protoc --python_out for every .proto under proto/; returns the files written.

    No .pyi: mypy checks stub files even under follow_imports=skip, and
    protoc's stubs are not strict-clean; the generated modules are typed Any.
    """
    # A build requirement, imported only when building.
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    if not protos:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    argv = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}", *protos]
    if protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed on {protos}")
    generated = sorted(p for p in out_dir.rglob("*_pb2.py"))
    for path in generated:
        # protoc writes imports between our protos as `from nodemesh.v1 import`,
        # but they live below nodemesh._gen (observer.proto imports flow.proto).
        text = path.read_text()
        fixed = text.replace("from nodemesh.v1 import", "from nodemesh._gen.nodemesh.v1 import")
        if fixed != text:
            path.write_text(fixed)
    return generated


def copy_assets(dest_root: Path) -> list[Path]:
    written: list[Path] = []
    for source, dest in ASSETS:
        src, dst = ROOT / source, dest_root / dest
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
            written += sorted(p for p in dst.rglob("*") if p.is_file())
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            written.append(dst)
    return written


class BuildPy(build_py):
    """build_py plus generated protos and shipped assets (see the module docstring)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            compile_protos(ROOT / "nodemesh" / "_gen")
            self._extra: list[Path] = []
            return
        package = Path(self.build_lib) / "nodemesh"
        self._extra = compile_protos(package / "_gen") + copy_assets(package / "_assets")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [str(p) for p in getattr(self, "_extra", [])]
        return [*super().get_outputs(include_bytecode), *extra]


setup(cmdclass={"build_py": BuildPy})
