"""Typed access to one pinned BPF map through its ctypes mirrors."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Generic, TypeVar

from nodemesh.ebpf import libbpf
from nodemesh.ebpf.errors import MapError
from nodemesh.ebpf.mirrors import Mirror

K = TypeVar("K", bound=Mirror)
V = TypeVar("V", bound=Mirror)

BPF_ANY = 0
ENOENT = 2


class PinnedMap(Generic[K, V]):
    """A map opened from its pin; close() (or `with`) releases the fd only,
    never the map, which lives as long as its pin."""

    def __init__(self, path: Path, key_type: type[K], value_type: type[V], capacity: int) -> None:
        self.path = path
        self.name = path.name
        self.key_type = key_type
        self.value_type = value_type
        self.capacity = capacity
        fd = libbpf.lib().bpf_obj_get(str(path).encode())
        self.fd = libbpf.check(fd, f"open pinned map {path}", MapError)

    def map_id(self) -> int:
        """The kernel's id of the map behind the pin: a new map (re-created
        pins) has a new id, so callers can tell whether a cached copy of its
        contents still describes it."""
        info = (ctypes.c_uint32 * 2)()  # struct bpf_map_info: type, id, ...
        size = ctypes.c_uint32(ctypes.sizeof(info))
        ret = libbpf.lib().bpf_obj_get_info_by_fd(self.fd, ctypes.byref(info), ctypes.byref(size))
        libbpf.check(ret, f"{self.name}: read map info", MapError)
        return int(info[1])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinnedMap[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, key: K, value: V) -> None:
        ret = libbpf.lib().bpf_map_update_elem(
            self.fd, ctypes.byref(key), ctypes.byref(value), BPF_ANY
        )
        libbpf.check(ret, f"{self.name}: update {key.as_tuple()}", MapError)

    def lookup(self, key: K) -> V | None:
        value = self.value_type()
        ret = libbpf.lib().bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value))
        if ret == -ENOENT:
            return None
        libbpf.check(ret, f"{self.name}: lookup {key.as_tuple()}", MapError)
        return value

    def delete(self, key: K) -> bool:
        """True if an entry was removed, False if there was none."""
        ret = libbpf.lib().bpf_map_delete_elem(self.fd, ctypes.byref(key))
        if ret == -ENOENT:
            return False
        libbpf.check(ret, f"{self.name}: delete {key.as_tuple()}", MapError)
        return True

    def iter_keys(self) -> Iterator[K]:
        lib = libbpf.lib()
        key = self.key_type()
        ret = lib.bpf_map_get_next_key(self.fd, None, ctypes.byref(key))
        while ret == 0:
            yield key
            nxt = self.key_type()
            ret = lib.bpf_map_get_next_key(self.fd, ctypes.byref(key), ctypes.byref(nxt))
            key = nxt
        if ret != -ENOENT:
            libbpf.check(ret, f"{self.name}: iterate", MapError)

    def items(self) -> dict[tuple[int, ...], tuple[K, V]]:
        """A snapshot: key tuple -> (key, value). Entries removed meanwhile are skipped."""
        out: dict[tuple[int, ...], tuple[K, V]] = {}
        for key in list(self.iter_keys()):
            value = self.lookup(key)
            if value is not None:
                out[key.as_tuple()] = (key, value)
        return out
