"""A thin ctypes binding of the few libbpf calls the datapath needs.

libbpf1 (the shared library) is what loads objects, reuses and creates pins,
and runs the bpf() syscall; this module only declares signatures and turns
negative returns into `LoadError`/`MapError` carrying libbpf's own log lines.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nodemesh.ebpf.errors import LoadError, MapError, PrerequisiteMissing

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
_log_lock = threading.Lock()
_log_lines: list[str] = []


def _on_libbpf_print(level: int, fmt: bytes | None, args: int | None) -> int:
    # libbpf hands a va_list; on x86-64 and arm64 that is passed as a pointer,
    # which libc's vsnprintf accepts as-is.
    buf = ctypes.create_string_buffer(1 << 18)  # verifier logs are long
    _libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").rstrip()
    if text:
        _log_lines.append(text)
    return 0


# Kept referenced for the process lifetime: libbpf holds the raw pointer.
_print_cb = _PRINT_FN(_on_libbpf_print)


def _signature(lib: ctypes.CDLL, name: str, res: Any, *args: Any) -> None:
    fn = getattr(lib, name)
    fn.restype = res
    fn.argtypes = list(args)


def lib() -> ctypes.CDLL:
    """libbpf.so.1, loaded once with the signatures below declared."""
    global _lib
    if _lib is not None:
        return _lib
    path = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        loaded = ctypes.CDLL(path, use_errno=True)
    except OSError as exc:
        raise PrerequisiteMissing(
            "libbpf (libbpf.so.1) is not installed", "install the Debian package libbpf1"
        ) from exc
    vp, cp, i, u32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32
    _signature(loaded, "libbpf_set_print", vp, _PRINT_FN)
    _signature(loaded, "bpf_object__open_file", vp, cp, vp)
    _signature(loaded, "bpf_object__load", i, vp)
    _signature(loaded, "bpf_object__close", None, vp)
    _signature(loaded, "bpf_object__next_map", vp, vp, vp)
    _signature(loaded, "bpf_object__next_program", vp, vp, vp)
    _signature(loaded, "bpf_map__name", cp, vp)
    _signature(loaded, "bpf_map__set_pin_path", i, vp, cp)
    _signature(loaded, "bpf_program__name", cp, vp)
    _signature(loaded, "bpf_program__fd", i, vp)
    _signature(loaded, "bpf_program__expected_attach_type", i, vp)
    _signature(loaded, "libbpf_get_error", ctypes.c_long, vp)
    _signature(loaded, "bpf_link_create", i, i, i, i, vp)
    _signature(loaded, "bpf_link_update", i, i, i, vp)
    _signature(loaded, "bpf_obj_pin", i, i, cp)
    _signature(loaded, "bpf_obj_get", i, cp)
    _signature(loaded, "bpf_obj_get_info_by_fd", i, i, vp, ctypes.POINTER(u32))
    _signature(loaded, "bpf_map_update_elem", i, i, vp, vp, ctypes.c_uint64)
    _signature(loaded, "bpf_map_lookup_elem", i, i, vp, vp)
    _signature(loaded, "bpf_map_delete_elem", i, i, vp)
    _signature(loaded, "bpf_map_get_next_key", i, i, vp, vp)
    loaded.libbpf_set_print(_print_cb)
    _lib = loaded
    return loaded


@contextmanager
def captured_log() -> Iterator[list[str]]:
    """Collects libbpf's log lines (verifier output included) for one call."""
    with _log_lock:
        _log_lines.clear()
        lines: list[str] = []
        try:
            yield lines
        finally:
            lines.extend(_log_lines)
            _log_lines.clear()


def check(ret: int, what: str, error: type[LoadError] | type[MapError] = LoadError) -> int:
    """Raise `error` for a negative libbpf return (which is -errno)."""
    if ret >= 0:
        return ret
    # libbpf 1.x returns -errno from every call declared here.
    code = -ret
    message = f"{what}: {os.strerror(code)} (errno {code})"
    raise LoadError(message, code) if error is LoadError else error(message)
