"""The kubelet-layout pod resolver, on plain directory trees shaped like a
kubelet's (path logic only; the kernel side is integration/datapath/
test_datapath_kubelet.py). The expected paths are spelled out as the kubelet
writes them (pkg/kubelet/cm, CgroupName.ToSystemd / ToCgroupfs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog.testing

from nodemesh.ebpf.errors import PrerequisiteMissing
from nodemesh.model.objects import Kind, ObjectRef, Pod, pairs
from nodemesh.node.kubelet_cgroups import KubeletPodCgroups, PodCgroupError, find_kubepods

UID = "5f0c1f8e-3b0a-4c7e-9d51-0a1b2c3d4e5f"
SYS = "5f0c1f8e_3b0a_4c7e_9d51_0a1b2c3d4e5f"

LAYOUTS = [
    # (kubepods cgroup, QoS class, the pod's cgroup below the tree root)
    (
        "kubepods.slice",
        "Burstable",
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYS}.slice",
    ),
    (
        "kubepods.slice",
        "BestEffort",
        f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SYS}.slice",
    ),
    ("kubepods.slice", "Guaranteed", f"kubepods.slice/kubepods-pod{SYS}.slice"),
    ("kubepods", "Burstable", f"kubepods/burstable/pod{UID}"),
    ("kubepods", "BestEffort", f"kubepods/besteffort/pod{UID}"),
    ("kubepods", "Guaranteed", f"kubepods/pod{UID}"),
    # kind: cgroupRoot /kubelet under the systemd driver prefixes every name.
    (
        "kubelet.slice/kubelet-kubepods.slice",
        "Burstable",
        f"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{SYS}.slice",
    ),
    (
        "kubelet.slice/kubelet-kubepods.slice",
        "Guaranteed",
        f"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{SYS}.slice",
    ),
]


def pod(name: str, uid: str | None, node: str | None = "node-a", ns: str = "default") -> Pod:
    return Pod(ObjectRef(Kind.POD, ns, name), pairs({"app": name}), (), node, uid=uid)


@pytest.mark.parametrize(("kubepods", "qos", "expected"), LAYOUTS)
def test_each_driver_and_qos_class_resolves_to_the_kubelets_path(
    tmp_path: Path, kubepods: str, qos: str, expected: str
) -> None:
    # The process lives in a container child; the pod's own cgroup is the answer.
    (tmp_path / expected / "cri-containerd-0123abcd.scope").mkdir(parents=True)
    resolver = KubeletPodCgroups(tmp_path / kubepods, node_name="node-a")
    resolver.observe([pod("curl", UID)])
    assert resolver.path_of("default/curl") == tmp_path / expected
    assert resolver.cgroup_id("default/curl") == os.stat(tmp_path / expected).st_ino


@pytest.mark.parametrize(
    "kubepods",
    [
        "kubepods.slice",
        "kubepods",
        "kubelet.slice/kubelet-kubepods.slice",
        "system.slice/docker-1.scope/kubepods",
    ],
)
def test_kubepods_is_found_below_the_mesh_cgroup(tmp_path: Path, kubepods: str) -> None:
    (tmp_path / "system.slice" / "containerd.service").mkdir(parents=True)
    (tmp_path / kubepods / "kubepods-burstable.slice").mkdir(parents=True)
    assert find_kubepods(tmp_path) == tmp_path / kubepods


def test_no_or_two_kubepods_cgroups_are_refused_with_what_to_pass(tmp_path: Path) -> None:
    (tmp_path / "system.slice").mkdir()
    with pytest.raises(PrerequisiteMissing) as none:
        find_kubepods(tmp_path)
    assert "no kubepods cgroup" in none.value.missing and "--kubepods-cgroup" in none.value.fix
    (tmp_path / "kubepods.slice").mkdir()
    (tmp_path / "kubepods").mkdir()
    with pytest.raises(PrerequisiteMissing) as two:
        find_kubepods(tmp_path)
    assert "more than one" in two.value.missing and str(tmp_path / "kubepods") in two.value.missing


def test_a_pod_whose_cgroup_is_missing_names_the_pod_uid_and_where_it_looked(
    tmp_path: Path,
) -> None:
    (tmp_path / "kubepods.slice").mkdir()
    resolver = KubeletPodCgroups(tmp_path / "kubepods.slice")
    resolver.observe([pod("curl", UID)])
    with pytest.raises(PodCgroupError) as err:
        resolver.path_of("default/curl")
    text = str(err.value)
    assert text.startswith("default/curl: ") and UID in text
    assert f"kubepods-burstable.slice/kubepods-burstable-pod{SYS}.slice" in text
    assert resolver.cgroup_id("default/curl") is None


def test_a_pod_without_a_uid_is_reported_by_name_and_field(tmp_path: Path) -> None:
    (tmp_path / "kubepods.slice").mkdir()
    resolver = KubeletPodCgroups(tmp_path / "kubepods.slice")
    resolver.observe([pod("curl", None)])
    with pytest.raises(PodCgroupError) as err:
        resolver.path_of("default/curl")
    assert str(err.value).startswith("default/curl: metadata.uid: missing")
    assert resolver.cgroup_id("default/curl") is None


def test_only_this_nodes_pods_and_the_latest_model_count(tmp_path: Path) -> None:
    root = tmp_path / "kubepods"
    (root / "burstable" / f"pod{UID}").mkdir(parents=True)
    resolver = KubeletPodCgroups(root, node_name="node-a")
    resolver.observe([pod("curl", UID, node="node-b")])
    with pytest.raises(PodCgroupError, match="not a pod of this node"):
        resolver.path_of("default/curl")
    resolver.observe([pod("curl", UID)])
    assert resolver.cgroup_id("default/curl") is not None
    resolver.observe([])  # the pod left the model
    assert resolver.cgroup_id("default/curl") is None


def test_an_unresolved_pod_is_logged_once_until_it_leaves_the_model(tmp_path: Path) -> None:
    (tmp_path / "kubepods").mkdir()
    resolver = KubeletPodCgroups(tmp_path / "kubepods")
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            resolver.observe([pod("curl", UID)])
            assert resolver.cgroup_id("default/curl") is None
        resolver.observe([])
        resolver.observe([pod("curl", UID)])
        resolver.cgroup_id("default/curl")
    reasons = [e["reason"] for e in logs if e["event"] == "pod_cgroup_not_resolved"]
    assert len(reasons) == 2 and reasons[0].startswith("default/curl: no cgroup for uid")
