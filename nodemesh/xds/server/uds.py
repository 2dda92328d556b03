"""The node-local Unix socket: checked before binding, removed only if ours.

gRPC core unlinks whatever socket file sits at a Unix address before it
binds, so a second server started on the same path would silently take it
over from a live one (and remove it when it stops). So before binding:

- a path too long for `sun_path`, or whose directory does not exist, is
  refused;
- a symlink, a directory or a regular file at the path is refused (never
  replaced: it is not ours);
- a socket that a live server answers on is refused;
- only a socket nobody answers on (left by a crashed run) is replaced.

gRPC also unlinks its socket path when it stops, whatever sits there by
then. So gRPC binds a private path beside the public one (`private_path`),
the public path is made a hard link to that socket (connect finds a Unix
socket by inode), and the private name is dropped at once: gRPC's unlink
at stop finds nothing, and the public path is removed only if it is still
the inode this process created.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import structlog

from nodemesh.xds.server.errors import ServerConfigError

log = structlog.get_logger("nodemesh.xds.server")

# sockaddr_un.sun_path is 108 bytes on Linux, including the final NUL.
MAX_PATH_BYTES = 107
_PROBE_TIMEOUT = 1.0


def _refuse(path: Path, reason: str) -> ServerConfigError:
    return ServerConfigError(f"xDS socket {str(path)!r}: {reason}")


def private_path(path: Path) -> Path:
    """Where gRPC binds before the socket is linked at `path`."""
    return path.parent / f".nm-xds-{os.getpid()}"


def prepare(path: Path) -> None:
    """Make `path` bindable, or raise ServerConfigError saying why not."""
    size = max(len(os.fsencode(path)), len(os.fsencode(private_path(path))))
    if size > MAX_PATH_BYTES:
        raise _refuse(
            path, f"path is {size} bytes, longer than the {MAX_PATH_BYTES} a socket allows"
        )
    if not path.parent.is_dir():
        what = "does not exist" if not path.parent.exists() else "is not a directory"
        raise _refuse(path, f"its directory {str(path.parent)!r} {what}")
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise _refuse(path, "is a symlink; refusing to replace it")
    if stat.S_ISDIR(mode):
        raise _refuse(path, "is a directory")
    if not stat.S_ISSOCK(mode):
        raise _refuse(path, "is a file that is not a socket; refusing to replace it")
    if _answers(path):
        raise _refuse(path, "a live server answers on it (stop it first, or choose another path)")
    path.unlink()
    log.info("xds_socket_stale_replaced", path=str(path))


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT)
        try:
            probe.connect(os.fsencode(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise _refuse(path, f"cannot tell whether a server answers on it: {exc}") from exc
        return True


@dataclass(frozen=True, slots=True)
class BoundSocket:
    """The socket this process created at `path` (by inode)."""

    path: Path
    device: int
    inode: int

    @classmethod
    def publish(cls, path: Path) -> BoundSocket:
        """Link the socket gRPC bound at `private_path(path)` at `path`
        (refused if anything appeared there since `prepare`), and drop the
        private name."""
        private = private_path(path)
        try:
            os.link(private, path)
        except FileExistsError as exc:
            raise _refuse(path, "something else was created at the path meanwhile") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                private.unlink()
        info = path.lstat()
        return cls(path, info.st_dev, info.st_ino)

    def remove(self) -> None:
        """Unlink the path if it is still this socket; leave anything else."""
        try:
            info = self.path.lstat()
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) != (self.device, self.inode):
            log.warning("xds_socket_not_ours", path=str(self.path))
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
