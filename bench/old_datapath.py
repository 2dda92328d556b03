"""An older revision's BPF programs loaded beside today's Python, so a
benchmark can run before and after in one run (bench/pod_cgroup_cost.py,
bench/datapath_revnat.py).

Today's loader and applier drive both sides. Objects added since `rev` are
left out, and maps today's applier writes but `rev` lacks get empty pins
that the old programs never read. The old side's config map is not
written: its programs see no proxy, which neither benchmark needs.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

from nodemesh.ebpf import build, loader, pinned

REPO = Path(__file__).resolve().parent.parent
# Written by today's applier, absent from older revisions: nm_services6_v1
# (before IPv6), nm_peer_ports_v1 (before the getpeername port filter).
APPLIER_MAPS = (pinned.SERVICES6, pinned.PEER_PORTS)
ARRAYS = (pinned.PEER_PORTS,)


def extract(rev: str, into: Path) -> Path:
    """The BPF sources of `rev`, as files; the directory build.py compiles."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, str(build.BPF_DIR.relative_to(REPO))],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / build.BPF_DIR.relative_to(REPO)


def _empty_map(maps_dir: Path, spec: pinned.MapSpec) -> None:
    pin = maps_dir / spec.name
    if pin.exists():
        return
    sizes = ["key", str(ctypes.sizeof(spec.key)), "value", str(ctypes.sizeof(spec.value))]
    kind, flags = ("array", "0") if spec in ARRAYS else ("hash", "1")  # 1: NO_PREALLOC
    rest = ["entries", str(spec.capacity), "name", spec.name, "flags", flags]
    subprocess.run(["bpftool", "map", "create", str(pin), "type", kind, *sizes, *rest], check=True)


def load_revision(
    rev: str, config: loader.DatapathConfig, workdir: Path, objects: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """Load `rev`'s programs (`objects`, default every one it has) on
    `config`; the names of the objects loaded."""
    bpf_dir = extract(rev, workdir)
    wanted = objects or build.OBJECTS
    present = tuple(name for name in wanted if (bpf_dir / f"{name}.c").exists())
    current, shipped = build.BPF_DIR, build.OBJECTS
    build.BPF_DIR, build.OBJECTS = bpf_dir, present
    try:
        built = build.build_objects()
    finally:
        build.BPF_DIR, build.OBJECTS = current, shipped
    for directory in (config.maps_dir, config.links_dir, config.progs_dir):
        directory.mkdir(parents=True, exist_ok=True)
    report = loader.LoadReport()
    for name in present:
        loader._load_object(built[name], config, report)
    for spec in APPLIER_MAPS:
        _empty_map(config.maps_dir, spec)
    return present
