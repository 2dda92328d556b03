"""The ctypes mirrors and map specs match the compiled objects' BTF."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from nodemesh.ebpf.build import BPF_DIR, OBJECTS, build_objects, cflags
from nodemesh.ebpf.events import Event
from nodemesh.ebpf.mirrors import Mirror
from tests.ebpf import btfcheck

pytestmark = pytest.mark.skipif(
    shutil.which("clang") is None or shutil.which("bpftool") is None,
    reason="clang and bpftool come from scripts/bootstrap.sh",
)


@pytest.mark.parametrize("name", OBJECTS)
def test_every_mirror_and_map_matches_btf(name: str) -> None:
    obj = build_objects()[name]
    assert btfcheck.check_object(obj) == []


def test_a_drifted_mirror_is_caught() -> None:
    class Drifted(Mirror):
        C_STRUCT = "nm_service_key"
        _fields_ = (
            ("vip", ctypes.c_uint32),  # network order in C: must be named vip_be
            ("port_be", ctypes.c_uint16),
            ("pad", ctypes.c_uint8),
            ("proto", ctypes.c_uint8),
            ("slot", ctypes.c_uint16),
        )

    types = btfcheck.dump(build_objects()["nm_sock"])
    problems = btfcheck.check_mirror(types, Drifted)
    text = "\n".join(problems)
    assert "'vip' should be 'vip_be'" in text
    assert "'pad' should be 'proto'" in text
    assert "slot: offset/size 8/2 != C 8/4" in text


def test_a_drifted_ipv6_mirror_is_caught() -> None:
    class Drifted6(Mirror):
        C_STRUCT = "nm_service6_key"
        _fields_ = (
            ("vip", ctypes.c_uint8 * 16),  # __be32[4] in C: must be named vip_be
            ("port_be", ctypes.c_uint16),
            ("proto", ctypes.c_uint8),
            ("pad", ctypes.c_uint8),
            ("slot", ctypes.c_uint32),
        )

    class Short6(Mirror):
        C_STRUCT = "nm_revnat6_key"
        _fields_ = (
            ("cookie", ctypes.c_uint64),
            ("addr_be", ctypes.c_uint32),  # an IPv4-sized address
            ("port_be", ctypes.c_uint16),
            ("pad", ctypes.c_uint16),
            ("pad2", ctypes.c_uint32),
        )

    types = btfcheck.dump(build_objects()["nm_sock6"])
    assert btfcheck.check_mirror(types, Drifted6) == [
        "Drifted6 (struct nm_service6_key): field 'vip' should be 'vip_be'"
    ]
    text = "\n".join(btfcheck.check_mirror(types, Short6))
    assert "size 24 != C 32" in text
    assert "addr_be: offset/size 8/4 != C 8/16" in text


def test_event_mirror_matches_btf(tmp_path: Path) -> None:
    # The event is no map key or value, and clang emits no BTF for the
    # types of inlined locals: compile an anchor that names it, from the
    # same header the programs include.
    src = tmp_path / "anchor.c"
    src.write_text('#include "lib/events.h"\nstruct nm_event nm_event_btf_anchor;\n')
    obj = tmp_path / "anchor.o"
    cmd = ["clang", *cflags(), f"-I{BPF_DIR}", "-c", str(src), "-o", str(obj)]
    subprocess.run(cmd, check=True)
    assert btfcheck.check_mirror(btfcheck.dump(obj), Event) == []
