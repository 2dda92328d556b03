"""Which cgroup each local pod runs in: how the kernel tells clients apart.

An L7 redirect for selected pods (a CiliumNetworkPolicy) is keyed in the kernel
by the client's pod cgroup id; connect() walks up from the process's own
cgroup (a container's, in a kubelet's tree) to find it, before any source
address exists. A resolver is the seam to whatever places pods in cgroups:
the kubelet (`kubelet_cgroups.KubeletPodCgroups`), or the test node builder
here (`DirectoryPodCgroups`). `root` is the cgroup the pod cgroups sit one or
two levels below; the kernel is told its id (`DatapathConfig.pod_cgroups`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from nodemesh.model.objects import Pod


class PodCgroups(Protocol):
    root: Path

    def observe(self, pods: Iterable[Pod]) -> None:
        """The model's pods, before each plan is applied (for resolvers that need UIDs)."""
        ...

    def cgroup_id(self, pod: str) -> int | None:
        """The cgroup id of pod "namespace/name" on this node, or None if not here."""
        ...


class DirectoryPodCgroups:
    """Pods live in `<root>/<namespace>_<name>` (the layout the test node and
    `nodemesh agent --pod-cgroups` use). Names are enough: no model needed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def observe(self, pods: Iterable[Pod]) -> None:
        pass

    def path_of(self, pod: str) -> Path:
        namespace, _, name = pod.partition("/")
        return self.root / f"{namespace}_{name}"

    def cgroup_id(self, pod: str) -> int | None:
        try:
            # A cgroup2 directory's inode number is its cgroup id.
            return os.stat(self.path_of(pod)).st_ino
        except FileNotFoundError:
            return None
