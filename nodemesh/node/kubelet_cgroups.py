"""Where the kubelet puts each pod's cgroup (cgroup v2), from the pod's UID.

The kubelet names a pod cgroup by the kubepods cgroup, the pod's QoS class
and its UID (pkg/kubelet/cm: the abstract name {kubepods, <qos>, pod<uid>},
with no QoS part for Guaranteed pods), and its cgroup driver renders it:

    systemd   kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice
              kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice
              kubepods.slice/kubepods-pod<uid>.slice                  (Guaranteed)
              ("-" in the UID becomes "_": systemd reads "-" as nesting)
    cgroupfs  kubepods/burstable/pod<uid>, kubepods/besteffort/pod<uid>, kubepods/pod<uid>

A kubelet `--cgroup-root` moves the kubepods cgroup and, under systemd, prefixes
every name below it: kind's `cgroupRoot: /kubelet` gives
`kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/...`.
So the kubepods cgroup's own path says everything: its name gives the driver
and the prefix. It is found by `find_kubepods` unless given.

Processes are not in the pod cgroup but in per-container children
(`cri-containerd-<id>.scope`, `crio-<id>.scope`, or `<id>` with cgroupfs);
the BPF side walks up to the pod cgroup (`bpf/lib/l7.h`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import structlog

from nodemesh.ebpf.errors import DatapathError, PrerequisiteMissing
from nodemesh.model.objects import Pod

log = structlog.get_logger("nodemesh.node.kubelet_cgroups")

# Burstable first: the most common class, then BestEffort, then Guaranteed.
QOS_CLASSES = ("burstable", "besteffort", "")
SLICE = ".slice"
SEARCH_DEPTH = 4


class PodCgroupError(DatapathError):
    """One pod's cgroup cannot be found; the message names the pod and why."""


def driver_of(kubepods: Path) -> str:
    return "systemd" if kubepods.name.endswith(SLICE) else "cgroupfs"


def pod_cgroup_candidates(kubepods: Path, uid: str) -> tuple[Path, ...]:
    """Every place the kubelet may have put pod `uid`, one per QoS class."""
    if driver_of(kubepods) == "cgroupfs":
        return tuple(
            kubepods / qos / f"pod{uid}" if qos else kubepods / f"pod{uid}" for qos in QOS_CLASSES
        )
    prefix = kubepods.name[: -len(SLICE)]
    escaped = uid.replace("-", "_")
    out: list[Path] = []
    for qos in QOS_CLASSES:
        if qos:
            out.append(kubepods / f"{prefix}-{qos}{SLICE}" / f"{prefix}-{qos}-pod{escaped}{SLICE}")
        else:
            out.append(kubepods / f"{prefix}-pod{escaped}{SLICE}")
    return tuple(out)


def _is_kubepods(name: str) -> bool:
    return name in ("kubepods", "kubepods.slice") or name.endswith("-kubepods.slice")


def find_kubepods(under: Path, max_depth: int = SEARCH_DEPTH) -> Path:
    """The kubelet's kubepods cgroup below `under` (breadth first, shallowest wins).

    Refuses, naming what it saw, when there is none or when two are equally
    shallow (two kubelets, or a leftover tree): then the operator passes the path.
    """
    level = [under]
    for _ in range(max_depth):
        found: list[Path] = []
        below: list[Path] = []
        for directory in level:
            try:
                children = [e for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue  # vanished or unreadable: not where the kubelet lives
            for entry in children:
                (found if _is_kubepods(entry.name) else below).append(Path(entry.path))
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(str(p) for p in sorted(found))
            raise PrerequisiteMissing(
                f"more than one kubepods cgroup below {under}: {names}",
                "pass the kubelet's with --kubepods-cgroup",
            )
        level = below
    raise PrerequisiteMissing(
        f"no kubepods cgroup within {max_depth} levels below {under} (looked for "
        "kubepods.slice, *-kubepods.slice and kubepods): not a Kubernetes node on cgroup v2?",
        "pass the kubelet's kubepods cgroup with --kubepods-cgroup, e.g. "
        "/sys/fs/cgroup/kubepods.slice (systemd driver) or /sys/fs/cgroup/kubepods (cgroupfs)",
    )


class KubeletPodCgroups:
    """Pods of this node -> their kubelet cgroups, keyed by UID from the model.

    `observe()` takes each model's pods (the agent calls it before planning
    redirects); a pod on another node is not here, and a pod whose cgroup is
    missing (not started yet, or gone) resolves to None and is retried with
    the next model.
    """

    def __init__(self, kubepods: Path, node_name: str = "") -> None:
        self.root = kubepods
        self.node_name = node_name
        self._uids: dict[str, str | None] = {}
        # pod -> the last reason logged for it; pruned with the model, so a
        # long-running agent does not keep every pod it ever saw.
        self._told: dict[str, str] = {}

    def observe(self, pods: Iterable[Pod]) -> None:
        uids: dict[str, str | None] = {}
        for pod in pods:
            if self.node_name and pod.node_name not in (self.node_name, None):
                continue
            uids[f"{pod.ref.namespace}/{pod.ref.name}"] = pod.uid
        self._uids = uids
        self._told = {k: v for k, v in self._told.items() if k in uids}

    def path_of(self, pod: str) -> Path:
        """The pod's cgroup directory; `PodCgroupError` says why there is none."""
        if pod not in self._uids:
            raise PodCgroupError(f"{pod}: not a pod of this node in the model")
        uid = self._uids[pod]
        if not uid:
            raise PodCgroupError(
                f"{pod}: metadata.uid: missing; the kubelet names a pod's cgroup by its UID"
            )
        candidates = pod_cgroup_candidates(self.root, uid)
        for path in candidates:
            if path.is_dir():
                return path
        tried = ", ".join(str(p.relative_to(self.root)) for p in candidates)
        raise PodCgroupError(f"{pod}: no cgroup for uid {uid} under {self.root} (tried {tried})")

    def cgroup_id(self, pod: str) -> int | None:
        try:
            path = self.path_of(pod)
            return os.stat(path).st_ino
        except PodCgroupError as exc:
            self._tell_once(pod, str(exc))
            return None
        except FileNotFoundError:
            return None  # removed between the check and the stat

    def _tell_once(self, pod: str, message: str) -> None:
        if self._told.get(pod) != message and pod in self._uids:
            self._told[pod] = message
            log.warning("pod_cgroup_not_resolved", reason=message)
