"""Refusals for what the agent cannot work without, each naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodemesh.ebpf import preflight
from nodemesh.ebpf.errors import PrerequisiteMissing


def test_missing_kernel_btf(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteMissing) as info:
        preflight.check_btf(tmp_path / "vmlinux")
    assert "no BTF" in info.value.missing and "CONFIG_DEBUG_INFO_BTF" in info.value.fix


def test_pin_dir_not_on_bpffs(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteMissing) as info:
        preflight.check_bpffs(tmp_path / "nodemesh")
    assert str(tmp_path) in info.value.missing and "mount -t bpf" in info.value.fix


def test_cgroup_missing_or_not_cgroup2(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteMissing, match="does not exist"):
        preflight.check_cgroup2(tmp_path / "nope", "mesh")
    with pytest.raises(PrerequisiteMissing) as info:
        preflight.check_cgroup2(tmp_path, "mesh")
    assert "not on a cgroup2" in info.value.missing and "cgroup2" in info.value.fix


@pytest.mark.parametrize(
    ("caps", "missing"),
    [
        (0, "CAP_BPF and CAP_NET_ADMIN"),
        (1 << preflight.CAP_NET_ADMIN, "CAP_BPF"),
        (1 << preflight.CAP_BPF, "CAP_NET_ADMIN"),
    ],
)
def test_missing_capabilities(caps: int, missing: str) -> None:
    with pytest.raises(PrerequisiteMissing) as info:
        preflight.check_privileges(caps)
    assert info.value.missing == f"the agent lacks {missing}"


def test_enough_capabilities() -> None:
    preflight.check_privileges((1 << preflight.CAP_BPF) | (1 << preflight.CAP_NET_ADMIN))
    preflight.check_privileges(1 << preflight.CAP_SYS_ADMIN)
