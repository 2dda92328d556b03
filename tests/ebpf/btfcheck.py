"""Compares the ctypes mirrors and map specs against a compiled object's BTF.

The BTF comes from `bpftool btf dump file X format raw`. For each mirror we
check the C struct's size, member names, offsets, sizes, and that exactly the
members typed `__be16`/`__be32` in C carry the `_be` suffix in Python. For each
map we check key size, value size and max_entries.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from nodemesh.ebpf.mirrors import ALL_MIRRORS, Mirror
from nodemesh.ebpf.pinned import ALL_MAPS

_TYPE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER = re.compile(r"^\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)")
_ATTR = re.compile(r"(\w+)=(\w+)")


@dataclass
class BtfType:
    kind: str
    name: str
    attrs: dict[str, str]
    members: list[tuple[str, int, int]] = field(default_factory=list)  # name, type, bits


def parse_raw(text: str) -> dict[int, BtfType]:
    types: dict[int, BtfType] = {}
    current: BtfType | None = None
    for line in text.splitlines():
        m = _TYPE.match(line)
        if m:
            current = BtfType(m[2], m[3], dict(_ATTR.findall(m[4])))
            types[int(m[1])] = current
            continue
        mm = _MEMBER.match(line)
        if mm and current is not None:
            current.members.append((mm[1], int(mm[2]), int(mm[3])))
    return types


def dump(obj: Path) -> dict[int, BtfType]:
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(obj), "format", "raw"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_raw(out)


def _resolve(types: dict[int, BtfType], tid: int) -> tuple[int, list[str]]:
    """Size of a type through typedefs/modifiers, plus the typedef names seen."""
    names: list[str] = []
    t = types[tid]
    while t.kind in ("TYPEDEF", "VOLATILE", "CONST"):
        names.append(t.name)
        t = types[int(t.attrs["type_id"])]
    if t.kind == "ARRAY":
        # An IPv6 address as __be32[4]: the element's typedefs name its order.
        elem, elem_names = _resolve(types, int(t.attrs["type_id"]))
        return elem * int(t.attrs["nr_elems"]), names + elem_names
    return int(t.attrs.get("size", 0)), names


def _struct(types: dict[int, BtfType], name: str) -> BtfType | None:
    return next((t for t in types.values() if t.kind == "STRUCT" and t.name == name), None)


def check_mirror(types: dict[int, BtfType], mirror: type[Mirror]) -> list[str]:
    where = f"{mirror.__name__} (struct {mirror.C_STRUCT})"
    st = _struct(types, mirror.C_STRUCT)
    if st is None:
        return [f"{where}: struct not in BTF"]
    problems: list[str] = []
    if int(st.attrs["size"]) != ctypes.sizeof(mirror):
        problems.append(f"{where}: size {ctypes.sizeof(mirror)} != C {st.attrs['size']}")
    py = [(n, getattr(mirror, n)) for n, *_ in mirror._fields_]
    if len(py) != len(st.members):
        problems.append(f"{where}: {len(py)} fields != C {len(st.members)} members")
    for (pname, desc), (cname, tid, bits) in zip(py, st.members, strict=False):
        size, typedefs = _resolve(types, tid)
        network = any(t.startswith("__be") for t in typedefs)
        expected = f"{cname}_be" if network else cname
        if pname != expected:
            problems.append(f"{where}: field {pname!r} should be {expected!r}")
        if desc.offset * 8 != bits or desc.size != size:
            problems.append(
                f"{where}.{pname}: offset/size {desc.offset}/{desc.size} != C {bits // 8}/{size}"
            )
    return problems


def _map_attr(types: dict[int, BtfType], member_tid: int, attr: str) -> int:
    pointee = types[int(types[member_tid].attrs["type_id"])]
    if attr == "max_entries":
        return int(pointee.attrs["nr_elems"])
    # key/value: a pointer to the key/value type.
    size, _ = _resolve(types, int(types[member_tid].attrs["type_id"]))
    return size


def check_maps(types: dict[int, BtfType]) -> list[str]:
    problems: list[str] = []
    for spec in ALL_MAPS:
        var = next((t for t in types.values() if t.kind == "VAR" and t.name == spec.name), None)
        if var is None:
            problems.append(f"map {spec.name}: not in BTF")
            continue
        members = {n: tid for n, tid, _ in types[int(var.attrs["type_id"])].members}
        expect = {
            "key": ctypes.sizeof(spec.key),
            "value": ctypes.sizeof(spec.value),
            "max_entries": spec.capacity,
        }
        for attr, want in expect.items():
            got = _map_attr(types, members[attr], attr)
            if got != want:
                problems.append(f"map {spec.name}: {attr} {want} in Python != {got} in C")
    return problems


def check_object(obj: Path) -> list[str]:
    """Every mismatch between the Python side and the object, as sentences."""
    types = dump(obj)
    problems = check_maps(types)
    for mirror in ALL_MIRRORS:
        if mirror.C_STRUCT:
            problems += check_mirror(types, mirror)
    return problems
