"""Which cgroup each local pod runs in: how the kernel tells clients apart.

An L7 redirect for selected pods (a CiliumNetworkPolicy) is keyed in the kernel
by the client's cgroup id, which connect() can read before any source address
exists. The resolver is the seam to whatever places pods in cgroups: the
kubelet's layout in a cluster, or the test node builder here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class PodCgroups(Protocol):
    def cgroup_id(self, pod: str) -> int | None:
        """The cgroup id of pod "namespace/name" on this node, or None if not here."""
        ...


class DirectoryPodCgroups:
    """Pods live in `<root>/<namespace>_<name>` (the layout the test node and
    `nodemesh agent` use; a kubelet-layout resolver can replace it)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, pod: str) -> Path:
        namespace, _, name = pod.partition("/")
        return self.root / f"{namespace}_{name}"

    def cgroup_id(self, pod: str) -> int | None:
        try:
            # A cgroup2 directory's inode number is its cgroup id.
            return os.stat(self.path_of(pod)).st_ino
        except FileNotFoundError:
            return None
