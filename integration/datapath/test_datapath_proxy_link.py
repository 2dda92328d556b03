"""The getsockopt link on the proxy's cgroup: upgrades and refusals.

An agent from before the proxy link pinned `nm_getsockopt` on the mesh
cgroup (`links/nm_getsockopt`). Upgrading must not leave a moment with no
SO_ORIGINAL_DST answer: that link goes only once the proxy link exists, with
a fixed proxy cgroup at load, with a followed Envoy pod at the first follow.
A proxy cgroup that is not there is refused by name, and the link in place
stays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from nodemesh.ebpf import libbpf, loader
from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.ebpf.errors import LoadError
from nodemesh.model.objects import Kind, ObjectRef, Pod, pairs
from nodemesh.node.proxy_follow import ProxyFollower, ProxyPod
from tests.support.polling import wait_until

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
    # The cgroup is released asynchronously: wait up to a minute for it, then go
    # on either way, as before (the assertions below check what load() did).
    with contextlib.suppress(AssertionError):
        wait_until(lambda: loader.linked_cgroup(link) == 0, what="cgroup released", timeout=60)
    loader.load(config)
    assert not link.exists()
    envoy_cgroup.mkdir()
    assert loader.attach_proxy(config, envoy_cgroup)
    assert attached(envoy_cgroup) == {"nm_getsockopt"}


def _envoy(name: str, uid: str) -> Pod:
    ref = ObjectRef(Kind.POD, "nodemesh-system", name)
    return Pod(ref, pairs(dict(LABELS)), (), None, uid=uid)


def test_upgrade_from_a_single_proxy_agent_moves_its_id_and_link_into_the_set(
    node: MeshNode,
) -> None:
    """What an agent before the set left (one followed id in nm_config_v2,
    one link nm_getsockopt_proxy) is retired only once the set holds the
    pod, under its own link: no moment where Envoy is steered or unanswered."""
    config = dataclasses.replace(node.config(), proxy_cgroup=None)
    loader.load(node.config())
    envoy_cgroup = node.mesh / "nodemesh-system_envoy"
    envoy_cgroup.mkdir()
    loader.attach_proxy(config, envoy_cgroup)  # the old agent's single link
    loader.set_proxy_cgroup(config.maps_dir, envoy_cgroup.stat().st_ino)
    loader.load(config)  # the new agent re-adopts, the old id stays meanwhile
    assert loader.linked_cgroup(config.links_dir / loader.PROXY_LINK) == envoy_cgroup.stat().st_ino
    follower = ProxyFollower(
        ProxyPod("nodemesh-system", LABELS), "", DirectoryPodCgroups(node.mesh), config
    )
    follower.follow([_envoy("envoy", "u1")])
    assert loader.proxy_set(config.maps_dir) == {envoy_cgroup.stat().st_ino}
    assert not (config.links_dir / loader.PROXY_LINK).exists()
    pod_link = config.links_dir / f"{loader.POD_LINK_PREFIX}u1"
    assert loader.linked_cgroup(pod_link) == envoy_cgroup.stat().st_ino
    assert attached(envoy_cgroup) == {"nm_getsockopt"}


def test_a_restarted_agent_reconciles_the_set_from_the_pins(node: MeshNode) -> None:
    """Two Envoy pods in the set and linked; the agent restarts; one pod's
    cgroup went meanwhile (its link auto-detached) and the model names only
    the other: the gone pod's link and id go, the other's stay."""
    config = dataclasses.replace(node.config(), proxy_cgroup=None)
    loader.load(node.config())
    selector = ProxyPod("nodemesh-system", LABELS)
    cgroups = [node.mesh / f"nodemesh-system_envoy-{n}" for n in ("a", "b")]
    for cg in cgroups:
        cg.mkdir()
    ids = [cg.stat().st_ino for cg in cgroups]
    pods = [_envoy("envoy-a", "ua"), _envoy("envoy-b", "ub")]
    ProxyFollower(selector, "", DirectoryPodCgroups(node.mesh), config).follow(pods)
    assert loader.proxy_set(config.maps_dir) == set(ids)
    links = [config.links_dir / f"{loader.POD_LINK_PREFIX}{u}" for u in ("ua", "ub")]
    assert [loader.linked_cgroup(p) for p in links] == ids

    cgroups[0].rmdir()  # envoy-a went while no agent ran
    with contextlib.suppress(AssertionError):  # as above: released asynchronously
        wait_until(lambda: loader.linked_cgroup(links[0]) == 0, what="cgroup released", timeout=60)
    report = loader.load(config)
    assert links[1].name in report.updated and not links[0].exists()
    assert loader.proxy_set(config.maps_dir) == set(ids)  # nothing removed before a model
    restarted = ProxyFollower(selector, "", DirectoryPodCgroups(node.mesh), config)
    restarted.follow([pods[1]])
    assert loader.proxy_set(config.maps_dir) == {ids[1]}
    assert [p.name for p in loader.proxy_links(config)] == [links[1].name]
    assert attached(cgroups[1]) == {"nm_getsockopt"}
