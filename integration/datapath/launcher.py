"""Start a command inside a pod: join its cgroup, then its network namespace.

Order matters: the cgroup is joined while /sys/fs/cgroup still shows the host's
view, and the process is in the cgroup before its first socket exists, so the
BPF hooks see every connect it makes.

    python launcher.py <cgroup dir> <netns name or ""> -- <argv...>
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

CLONE_NEWNET = 0x40000000


def main() -> None:
    cgroup, netns = sys.argv[1], sys.argv[2]
    argv = sys.argv[sys.argv.index("--") + 1 :]
    if cgroup:
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    if netns:
        fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
        os.close(fd)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
