"""The agent's cgroup -> pod index (wiring.flows.CgroupPods) over real
directories (a directory's inode number is what a cgroup2 id is): a pod's
cgroup and its containers' resolve; a container started later is found on
a miss once the refresh interval has passed, and not before."""

from __future__ import annotations

import os
from pathlib import Path

from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.model.objects import Kind, ObjectRef, Pod
from nodemesh.wiring.flows import CgroupPods
from tests.support.factory import mesh_model


def _pod(name: str) -> Pod:
    return Pod(ObjectRef(Kind.POD, "default", name), (), ("10.0.1.2",), "n")


def ino(path: Path) -> int:
    return os.stat(path).st_ino


def test_pods_and_their_containers_resolve_and_late_containers_after_refresh(
    tmp_path: Path,
) -> None:
    (tmp_path / "default_curl" / "ctr-a").mkdir(parents=True)
    model = mesh_model(pods=[_pod("curl")])
    now = [0.0]
    index = CgroupPods(DirectoryPodCgroups(tmp_path), lambda: model, 1.0, lambda: now[0])

    assert index(ino(tmp_path / "default_curl")) == "default/curl"
    assert index(ino(tmp_path / "default_curl" / "ctr-a")) == "default/curl"
    late = tmp_path / "default_curl" / "ctr-b"
    late.mkdir()
    assert index(ino(late)) is None  # no rebuild within the interval
    now[0] = 1.5
    assert index(ino(late)) == "default/curl"
    assert index(ino(tmp_path)) is None


def test_no_model_no_pods(tmp_path: Path) -> None:
    index = CgroupPods(DirectoryPodCgroups(tmp_path), lambda: None)
    assert index(os.stat(tmp_path).st_ino) is None
