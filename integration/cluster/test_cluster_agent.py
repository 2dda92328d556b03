"""`nodemesh agent run --kubernetes` against the real control plane: the node
agent process with deploy/'s ServiceAccount (a TokenRequest token) and the
capabilities deploy/agent-daemonset.yaml grants, on a test node made of
cgroups and a private bpffs (integration/datapath/node.py).

The agent watches only its node's pods (fieldSelector on spec.nodeName) and
the cluster's Services, EndpointSlices and policies, and programs its kernel
from them:
- the Service VIP translates to the addresses the real EndpointSlice
  controller wrote;
- the article's CiliumNetworkPolicy steers its node's app=curl pods (found by
  UID in a kubelet-shaped cgroup tree), not another node's;
- the node's Envoy pod from deploy/'s DaemonSet is the proxy;
- a pod created or deleted with kubectl moves the kernel's redirects;
- not one request of the agent's account was refused (audit log).

No Envoy runs here (the agent steers anyway after --envoy-sync-timeout):
traffic through the kernel and Envoy is the datapath suite's; this file is
about what the agent reads from a real API server and with which rights.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from integration.cluster.cluster_support import (
    AGENT_SA,
    AGENT_USER,
    apply_article,
    forbidden,
    kget,
    ready_endpoints,
    wait_for,
)
from integration.cluster.kube_cluster import KubeCluster, free_port
from integration.datapath.node import NODE_IP, MeshNode
from nodemesh.ebpf import applier, loader, pinned
from nodemesh.ebpf.mirrors import ip_be, port_be

pytestmark = [pytest.mark.k8s, pytest.mark.privileged]

NODE, OTHER = "node-0", "node-1"
# deploy/agent-daemonset.yaml's capabilities (BPF, NET_ADMIN; PERFMON and
# SYS_RESOURCE are for the event ring and old kernels' memlock).
CAPS = "+bpf,+net_admin,+perfmon,+sys_resource"
LEAST = ["setpriv", f"--bounding-set=-all,{CAPS}", "--inh-caps=-all", "--"]


class Agent(NamedTuple):
    node: MeshNode
    kubepods: Path
    log: Path
    audit_from: int


def curl_pod(name: str, node: str) -> str:
    """A client the article's CiliumNetworkPolicy selects (app=curl), placed
    on `node` by the real scheduler (a nodeSelector, not spec.nodeName)."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "curl"}},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "containers": [{"name": "curl", "image": "curlimages/curl"}],
            },
        }
    )


def pod_cgroup(kubepods: Path, uid: str) -> Path:
    """The pod's cgroup as the kubelet's systemd driver makes it (BestEffort),
    with one container scope in it."""
    escaped = uid.replace("-", "_")
    qos = kubepods / "kubepods-besteffort.slice"
    pod = qos / f"kubepods-besteffort-pod{escaped}.slice"
    (pod / f"cri-containerd-{secrets.token_hex(32)}.scope").mkdir(parents=True, exist_ok=True)
    return pod


def scheduled_uid(kube: KubeCluster, name: str, namespace: str = "default") -> str:
    def bound() -> str | None:
        pod = kget(kube, "pod", name, "-n", namespace)
        return pod["metadata"]["uid"] if pod["spec"].get("nodeName") else None

    return wait_for(bound, f"pod {namespace}/{name} scheduled")


def envoy_pod_on(kube: KubeCluster, node: str) -> dict[str, Any]:
    """deploy/'s node Envoy pod that the scheduler put on `node`."""

    def found() -> dict[str, Any] | None:
        pods = kget(
            kube, "pods", "-n", "nodemesh-system", "-l", "app.kubernetes.io/name=nodemesh-envoy"
        )["items"]
        return next((p for p in pods if p["spec"].get("nodeName") == node), None)

    return wait_for(found, f"the node Envoy pod on {node}")


@pytest.fixture(scope="module")
def agent(deployed: KubeCluster) -> Iterator[Agent]:
    apply_article(deployed)
    for name, node in (("curl-a", NODE), ("curl-other", OTHER)):
        deployed.kubectl("apply", "-f", "-", stdin=curl_pod(name, node))
    work = Path(tempfile.mkdtemp(prefix="nm-agent-"))
    mesh = MeshNode(work)
    kubeconfig = deployed.service_account_kubeconfig(*AGENT_SA)
    try:
        mesh.setup()
        kubepods = mesh.mesh / "kubepods.slice"
        kubepods.mkdir()
        # Every pod's cgroup exists here, the other node's too: only the
        # agent's pod watch (its node's pods) decides which it programs.
        for name in ("curl-a", "curl-other"):
            pod_cgroup(kubepods, scheduled_uid(deployed, name))
        for node in (NODE, OTHER):
            pod_cgroup(kubepods, envoy_pod_on(deployed, node)["metadata"]["uid"])
        audit_from = deployed.audit_mark()
        log = work / "agent.log"
        argv = [
            *LEAST,
            sys.executable,
            "-m",
            "nodemesh.cmd.main",
            "agent",
            "run",
            f"--pin-dir={mesh.pin_dir}",
            f"--cgroup={mesh.mesh}",
            "--kubepods-cgroup=auto",
            f"--proxy-address={NODE_IP}",
            f"--node-name={NODE}",
            "--kubernetes",
            f"--kubeconfig={kubeconfig}",
            f"--xds-address=127.0.0.1:{free_port()}",
            f"--admin=127.0.0.1:{free_port()}",
            f"--observer-address=unix:{work / 'observer.sock'}",
            "--envoy-sync-timeout=1",
        ]
        with log.open("w") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )
        mesh.procs.append(proc)
        wait_for(
            lambda: proc.poll() is not None or "agent ready" in log.read_text(),
            "the agent to start",
            120,
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        yield Agent(mesh, kubepods, log, audit_from)
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        try:
            loader.cleanup(mesh.config())
        finally:
            mesh.teardown()
            shutil.rmtree(work, ignore_errors=True)
            for name in ("curl-a", "curl-b", "curl-other"):
                deployed.kubectl("delete", "pod", name, "--ignore-not-found", "--wait=false")


def redirected_cgroups(agent: Agent) -> set[int]:
    maps = agent.node.config().maps_dir
    with pinned.open_map(maps, pinned.L7REDIR) as m:
        return {key[0] for key in applier.read_redirects(m)}


def backends(agent: Agent, vip: str, port: int) -> set[tuple[int, int]]:
    with pinned.open_map(agent.node.config().maps_dir, pinned.SERVICES) as m:
        services = applier.read_services(m)
    slots = services.get((ip_be(vip), port_be(port), 6), {})
    return {applier.slot_addr(v) for slot, v in slots.items() if slot}


def ino(path: Path) -> int:
    return os.stat(path).st_ino


def until(agent: Agent, check: Any, what: str) -> Any:
    try:
        return wait_for(check, what, 90)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nthe agent's log:\n{agent.log.read_text()[-3000:]}") from None


def test_agent_programs_its_node_from_the_cluster(deployed: KubeCluster, agent: Agent) -> None:
    svc = kget(deployed, "service", "httpbin")
    vip, port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]
    want = wait_for(
        lambda: (eps := ready_endpoints(deployed, "httpbin")) and len(eps) >= 2 and eps,
        "httpbin's EndpointSlices from the controller",
    )
    expected = {(ip_be(ip), port_be(port["targetPort"])) for ip in want}
    until(
        agent,
        lambda: backends(agent, vip, port["port"]) == expected,
        f"{vip}:{port['port']} translated to the EndpointSlice addresses {want}",
    )
    curl_a = pod_cgroup(agent.kubepods, scheduled_uid(deployed, "curl-a"))
    until(
        agent,
        lambda: redirected_cgroups(agent) == {ino(curl_a)},
        "this node's app=curl pod steered, the other node's not",
    )
    envoy = pod_cgroup(agent.kubepods, envoy_pod_on(deployed, NODE)["metadata"]["uid"])
    maps = agent.node.config().maps_dir
    until(agent, lambda: loader.proxy_set(maps) == {ino(envoy)}, "this node's Envoy pod as proxy")


def test_pods_made_and_deleted_with_kubectl_move_the_redirects(
    deployed: KubeCluster, agent: Agent
) -> None:
    curl_a = pod_cgroup(agent.kubepods, scheduled_uid(deployed, "curl-a"))
    deployed.kubectl("apply", "-f", "-", stdin=curl_pod("curl-b", NODE))
    curl_b = pod_cgroup(agent.kubepods, scheduled_uid(deployed, "curl-b"))
    until(
        agent,
        lambda: redirected_cgroups(agent) == {ino(curl_a), ino(curl_b)},
        "the new pod steered",
    )
    deployed.kubectl("delete", "pod", "curl-a")
    until(agent, lambda: redirected_cgroups(agent) == {ino(curl_b)}, "the deleted pod's entry gone")


def test_the_agent_watched_its_node_only_and_was_never_refused(
    deployed: KubeCluster, agent: Agent
) -> None:
    """After the scenarios above (file order): what the agent's account asked
    for, from the audit log."""
    until(agent, lambda: redirected_cgroups(agent), "the scenario to have run")
    events = deployed.audit_events(AGENT_USER, since=agent.audit_from)
    assert forbidden(deployed, since=agent.audit_from) == []
    reads = [e for e in events if e["verb"] in ("list", "watch")]
    resources = {e["objectRef"]["resource"] for e in reads}
    assert {
        "pods",
        "services",
        "endpointslices",
        "ciliumnetworkpolicies",
        "networkpolicies",
        "ciliumenvoyconfigs",
    } <= resources, resources
    pods = [e["requestURI"] for e in reads if e["objectRef"]["resource"] == "pods"]
    assert {"list", "watch"} <= {e["verb"] for e in reads if e["objectRef"]["resource"] == "pods"}
    assert all(f"fieldSelector=spec.nodeName%3D{NODE}" in uri for uri in pods), pods
