"""Linux inotify on one directory, through ctypes (no dependency): wakes the
file source as soon as a manifest changes instead of at its next poll, and
tells it which files were closed after writing (complete, so no settle wait).

`DirectoryWatch.open(path)` returns None where inotify is unavailable (not
Linux, no libc symbol, the per-user watch limit reached); the file source
then polls as before. Polling stays on as a fallback either way: a missed
event (queue overflow, a directory replaced under a mount) costs at most
one poll interval.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

import structlog

log = structlog.get_logger("nodemesh.sources.files")

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
# A file whose last event is one of these holds what its writer meant: the
# writer closed it, or it was renamed into place whole.
_COMPLETE = IN_CLOSE_WRITE | IN_MOVED_TO
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


class DirectoryWatch:
    """Events of one directory, read on the event loop. `changed` is set on
    any event; `take_complete()` hands over the names closed after writing
    (or moved in) whose last event was that, with a serial per event."""

    def __init__(self, fd: int, directory: Path) -> None:
        self._fd = fd
        self.directory = directory
        self.changed = asyncio.Event()
        self._serial = 0
        # name -> serial of its last event, for names whose last event completed them
        self._complete: dict[str, int] = {}

    @classmethod
    def open(cls, directory: Path) -> DirectoryWatch | None:
        libc = _libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            log.warning("file_source_no_inotify", reason=os.strerror(ctypes.get_errno()))
            return None
        if libc.inotify_add_watch(fd, os.fsencode(directory), _MASK) < 0:
            reason = os.strerror(ctypes.get_errno())
            os.close(fd)
            log.warning("file_source_no_inotify", directory=str(directory), reason=reason)
            return None
        watch = cls(fd, directory)
        asyncio.get_running_loop().add_reader(fd, watch._read)
        return watch

    def close(self) -> None:
        if self._fd < 0:
            return
        asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1

    def complete(self) -> dict[str, int]:
        """Names whose last event completed them: name -> that event's serial.
        Pass the result to `consumed` once a scan has read them."""
        return dict(self._complete)

    def consumed(self, taken: dict[str, int]) -> None:
        """Forget names a scan has read, unless an event came after."""
        for name, serial in taken.items():
            if self._complete.get(name) == serial:
                del self._complete[name]

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("file_source_inotify_failed", reason=exc.strerror)
            self.close()
            return
        self._apply(data)
        self.changed.set()

    def _apply(self, data: bytes) -> None:
        offset = 0
        while offset + _HEADER.size <= len(data):
            _, mask, _, length = _HEADER.unpack_from(data, offset)
            raw = data[offset + _HEADER.size : offset + _HEADER.size + length]
            offset += _HEADER.size + length
            if mask & IN_Q_OVERFLOW:
                self._complete.clear()  # the next poll reads by stat and settle
                continue
            name = os.fsdecode(raw.rstrip(b"\0"))
            if not name:
                continue
            self._serial += 1
            if mask & _COMPLETE:
                self._complete[name] = self._serial
            elif not mask & IN_ATTRIB:  # a touch or chmod writes no content
                self._complete.pop(name, None)  # being written (again): settle
