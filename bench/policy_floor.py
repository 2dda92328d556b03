"""What bpf_stats itself costs per program run, so bench/policy.py can say
what our programs cost net of it.

With kernel.bpf_stats_enabled=1 every run of every program is timed with
two clock reads, and on this VM that is most of a run of a program that
does nothing. Programs that only `return 1` are attached beside ours to the
client's cgroup (one per hook type the client's socket meets); their mean
ns per run is the floor: the stats' clocks plus the kernel's dispatch to a
program. Our programs' cost net of the floor is what they add over a hook
with nothing to do.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

from nodemesh.ebpf import build, libbpf

SOURCE = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("sockops") int nmfloor_sockops(struct bpf_sock_ops *c) { return 1; }
SEC("cgroup/connect4") int nmfloor_connect4(struct bpf_sock_addr *c) { return 1; }
SEC("cgroup/getpeername4") int nmfloor_getpeer4(struct bpf_sock_addr *c) { return 1; }
SEC("cgroup/sock_release") int nmfloor_release(struct bpf_sock *c) { return 1; }
char _license[] SEC("license") = "GPL";
"""
PREFIX = "nmfloor_"


class Floor:
    """The empty programs, attached to `cgroups` until close()."""

    def __init__(self, workdir: Path, cgroups: list[Path]) -> None:
        src, obj = workdir / "nmfloor.c", workdir / "nmfloor.o"
        src.write_text(SOURCE)
        clang = shutil.which("clang") or "clang"
        subprocess.run([clang, *build.cflags(), "-c", str(src), "-o", str(obj)], check=True)
        lib = libbpf.lib()
        self._obj = lib.bpf_object__open_file(str(obj).encode(), None)
        libbpf.check(lib.bpf_object__load(self._obj), "load the floor programs")
        self._links: list[int] = []
        prog = lib.bpf_object__next_program(self._obj, None)
        while prog:
            for cgroup in cgroups:
                fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    attach = lib.bpf_program__expected_attach_type(prog)
                    link = lib.bpf_link_create(lib.bpf_program__fd(prog), fd, attach, None)
                    self._links.append(libbpf.check(link, f"attach the floor to {cgroup}"))
                finally:
                    os.close(fd)
            prog = lib.bpf_object__next_program(self._obj, prog)

    def close(self) -> None:
        for link in self._links:
            os.close(link)  # unpinned: closing the last fd detaches
        self._links = []
        if self._obj:
            libbpf.lib().bpf_object__close(ctypes.c_void_p(self._obj))
            self._obj = None


def floor_ns(delta: dict[str, tuple[int, float]]) -> float:
    """Mean ns per run of the empty programs in a hook_delta() reading."""
    runs = sum(r for name, (r, _) in delta.items() if name.startswith(PREFIX))
    total = sum(r * ns for name, (r, ns) in delta.items() if name.startswith(PREFIX))
    return total / runs if runs else 0.0


def net_per_connect(
    delta: dict[str, tuple[int, float]], n: int, floor: float, skip: tuple[str, ...] = ()
) -> float:
    """Our programs' ns per connect above the floor (a run costs at least 0)."""
    return (
        sum(
            runs * max(0.0, ns - floor)
            for name, (runs, ns) in delta.items()
            if not name.startswith(PREFIX) and name not in skip
        )
        / n
    )
