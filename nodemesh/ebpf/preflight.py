"""Checks that the kernel, the mounts and our privileges can run the datapath.

Each failed check raises `PrerequisiteMissing` saying what is missing and how
to provide it, before anything is loaded or written.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from nodemesh.ebpf.errors import PrerequisiteMissing

BPF_FS_MAGIC = 0xCAFE4A11
CGROUP2_SUPER_MAGIC = 0x63677270
KERNEL_BTF = Path("/sys/kernel/btf/vmlinux")

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39

_libc = ctypes.CDLL(None, use_errno=True)


def fs_magic(path: Path) -> int:
    """statfs(2) f_type of the filesystem holding `path`."""
    # struct statfs starts with a long f_type on every Linux ABI we run on.
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(str(path).encode(), buf) != 0:
        err = ctypes.get_errno()
        raise FileNotFoundError(err, os.strerror(err), str(path))
    return int.from_bytes(buf.raw[: ctypes.sizeof(ctypes.c_long)], "little")


def effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_btf(btf: Path = KERNEL_BTF) -> None:
    if not btf.exists():
        raise PrerequisiteMissing(
            f"the kernel exposes no BTF ({btf} is missing)",
            "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's kernels are)",
        )


def existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_bpffs(pin_dir: Path) -> None:
    where = existing_ancestor(pin_dir)
    if fs_magic(where) != BPF_FS_MAGIC:
        raise PrerequisiteMissing(
            f"{where} is not on a BPF filesystem, so maps cannot be pinned at {pin_dir}",
            f"mount bpffs first (`mount -t bpf bpf {where}`; in Kubernetes, a hostPath "
            "volume of the host's /sys/fs/bpf) or pass --pin-dir on a bpffs mount",
        )


def check_cgroup2(cgroup: Path, what: str) -> None:
    if not cgroup.is_dir():
        raise PrerequisiteMissing(
            f"the {what} cgroup {cgroup} does not exist",
            "create it (mkdir under the cgroup2 mount) or pass the right path",
        )
    if fs_magic(cgroup) != CGROUP2_SUPER_MAGIC:
        raise PrerequisiteMissing(
            f"{cgroup} is not on a cgroup2 (unified) filesystem",
            "mount cgroup2 (`mount -t cgroup2 none /sys/fs/cgroup/unified`, or boot with "
            "systemd.unified_cgroup_hierarchy=1) and pass a cgroup under it",
        )


def check_privileges(caps: int | None = None) -> None:
    caps = effective_caps() if caps is None else caps
    missing = [
        name
        for bit, name in ((CAP_BPF, "CAP_BPF"), (CAP_NET_ADMIN, "CAP_NET_ADMIN"))
        if not caps & (1 << bit) and not caps & (1 << CAP_SYS_ADMIN)
    ]
    if missing:
        raise PrerequisiteMissing(
            f"the agent lacks {' and '.join(missing)}",
            "grant CAP_BPF and CAP_NET_ADMIN (Kubernetes: securityContext.capabilities.add; "
            "systemd: AmbientCapabilities=) or run as root",
        )


def check_all(pin_dir: Path, cgroup: Path, proxy_cgroup: Path | None) -> None:
    check_btf()
    check_privileges()
    check_bpffs(pin_dir)
    check_cgroup2(cgroup, "mesh")
    if proxy_cgroup is not None:
        check_cgroup2(proxy_cgroup, "proxy")
