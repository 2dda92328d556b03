"""The getsockopt link on the proxy's cgroup: upgrades and refusals.

An agent from before the proxy link pinned `nm_getsockopt` on the mesh
cgroup (`links/nm_getsockopt`). Upgrading must not leave a moment with no
SO_ORIGINAL_DST answer: that link goes only once the proxy link exists, with
a fixed proxy cgroup at load, with a followed Envoy pod at the first follow.
A proxy cgroup that is not there is refused by name, and the link in place
stays.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from nodemesh.ebpf import libbpf, loader
from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.ebpf.errors import LoadError
from nodemesh.ebpf.proxy_follow import ProxyFollower, ProxyPod
from nodemesh.model.objects import Kind, ObjectRef, Pod, pairs

from .node import MeshNode

pytestmark = pytest.mark.privileged

LABELS = (("app", "envoy"),)


def attached(cgroup: Path) -> set[str]:
    out = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True, check=True
    ).stdout
    return {e["name"] for e in json.loads(out.strip() or b"[]")}


def legacy_mesh_link(config: loader.DatapathConfig) -> Path:
    """What an older agent left: nm_getsockopt linked to the mesh cgroup and
    pinned as links/nm_getsockopt, and no proxy link."""
    (config.links_dir / loader.PROXY_LINK).unlink(missing_ok=True)
    lib = libbpf.lib()
    prog = str(config.progs_dir / loader.PROXY_PROGRAM).encode()
    prog_fd = libbpf.check(lib.bpf_obj_get(prog), "open the pinned program")
    cg_fd = os.open(config.cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        link_fd = libbpf.check(
            lib.bpf_link_create(prog_fd, cg_fd, loader.BPF_CGROUP_GETSOCKOPT, None), "link"
        )
    finally:
        os.close(cg_fd)
        os.close(prog_fd)
    pin = config.links_dir / loader.LEGACY_MESH_LINK
    try:
        libbpf.check(lib.bpf_obj_pin(link_fd, str(pin).encode()), "pin")
    finally:
        os.close(link_fd)
    assert "nm_getsockopt" in attached(config.cgroup)
    return pin


def test_upgrade_with_a_fixed_proxy_cgroup_moves_getsockopt_off_the_mesh(node: MeshNode) -> None:
    config = node.config()
    loader.load(config)
    legacy = legacy_mesh_link(config)
    report = loader.load(config)
    assert loader.PROXY_LINK in report.created
    assert not legacy.exists()
    assert "nm_getsockopt" not in attached(node.mesh)
    assert attached(node.proxy_cgroup) == {"nm_getsockopt"}


def test_upgrade_with_a_followed_envoy_pod_keeps_the_mesh_link_until_the_pod_is_linked(
    node: MeshNode,
) -> None:
    config = dataclasses.replace(node.config(), proxy_cgroup=None)
    loader.load(node.config())  # the program pinned (as any earlier load would)
    legacy = legacy_mesh_link(config)
    envoy_cgroup = node.mesh / "nodemesh-system_envoy"
    envoy_cgroup.mkdir()
    loader.load(config)
    assert legacy.exists() and "nm_getsockopt" in attached(node.mesh)  # no gap yet

    follower = ProxyFollower(
        ProxyPod("nodemesh-system", LABELS), "", DirectoryPodCgroups(node.mesh), config
    )
    envoy = Pod(ObjectRef(Kind.POD, "nodemesh-system", "envoy"), pairs(dict(LABELS)), (), None)
    follower.follow([envoy])
    assert not legacy.exists()
    assert "nm_getsockopt" not in attached(node.mesh)
    assert attached(envoy_cgroup) == {"nm_getsockopt"}
    link = config.links_dir / f"{loader.POD_LINK_PREFIX}nodemesh-system_envoy"
    assert loader.linked_cgroup(link) == envoy_cgroup.stat().st_ino
    assert loader.proxy_set(config.maps_dir) == {envoy_cgroup.stat().st_ino}


def test_a_missing_proxy_cgroup_is_refused_by_name_and_the_link_stays(node: MeshNode) -> None:
    config = node.config()
    loader.load(config)
    missing = node.mesh / "nodemesh-system_gone"
    with pytest.raises(LoadError, match=f"proxy cgroup {missing}: No such file or directory"):
        loader.attach_proxy(config, missing)
    assert attached(node.proxy_cgroup) == {"nm_getsockopt"}
    link = config.links_dir / loader.PROXY_LINK
    assert loader.linked_cgroup(link) == node.proxy_cgroup.stat().st_ino


def test_a_restarted_agent_drops_a_link_whose_envoy_pod_cgroup_is_gone(node: MeshNode) -> None:
    """The Envoy pod went while the agent was down: the kernel auto-detached
    its link (the cgroup was released), which cannot be updated; load()
    drops it instead of failing, and the next pod is linked afresh."""
    config = dataclasses.replace(node.config(), proxy_cgroup=None)
    loader.load(node.config())
    envoy_cgroup = node.mesh / "nodemesh-system_envoy"
    envoy_cgroup.mkdir()
    loader.attach_proxy(config, envoy_cgroup)
    envoy_cgroup.rmdir()
    link = config.links_dir / loader.PROXY_LINK
    for _ in range(600):  # the cgroup is released asynchronously
        if loader.linked_cgroup(link) == 0:
            break
        time.sleep(0.1)
    loader.load(config)
    assert not link.exists()
    envoy_cgroup.mkdir()
    assert loader.attach_proxy(config, envoy_cgroup)
    assert attached(envoy_cgroup) == {"nm_getsockopt"}
