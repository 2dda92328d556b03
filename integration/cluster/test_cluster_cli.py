"""`nodemesh k8s-watch` as an operator runs it against the real cluster: with
the agent's ServiceAccount kubeconfig, and with --node, which watches only
that node's pods through a fieldSelector on spec.nodeName that the real API
server evaluates (the real scheduler decided which pods are there)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from integration.cluster.cluster_support import AGENT_SA, AGENT_USER, apply_article, kget, wait_for
from integration.cluster.kube_cluster import KubeCluster, free_port

pytestmark = pytest.mark.k8s


def k8s_watch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "nodemesh.cmd.main",
            "k8s-watch",
            "--once",
            "--timeout",
            "60",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def counts(summary: str) -> dict[str, int]:
    found = re.findall(r"(services|pods|envoy configs|errors) (\d+)", summary)
    return {name: int(n) for name, n in found}


def test_k8s_watch_once_with_the_agents_kubeconfig(deployed: KubeCluster) -> None:
    apply_article(deployed)
    kubeconfig = deployed.service_account_kubeconfig(*AGENT_SA)
    services = len(kget(deployed, "services", "-A")["items"])
    mark = deployed.audit_mark()
    done = k8s_watch("--kubeconfig", str(kubeconfig))
    assert done.returncode == 0, done.stderr
    seen = counts(done.stdout)
    assert seen["services"] == services, done.stdout
    assert seen["envoy configs"] >= 1, done.stdout
    verbs = {e["verb"] for e in deployed.audit_events(AGENT_USER, since=mark)}
    assert verbs == {"list", "watch"}, "the kubeconfig's account, and read-only by default"


def test_unreachable_server_says_why(deployed: KubeCluster) -> None:
    """The kubeconfig names a port where no API server listens (it stopped)."""
    kubeconfig = deployed.service_account_kubeconfig(
        *AGENT_SA, server=f"https://127.0.0.1:{free_port()}"
    )
    done = k8s_watch("--kubeconfig", str(kubeconfig), "--timeout", "2")
    assert done.returncode == 1, done.stderr
    assert "not synced after 2 s" in done.stderr and "ApiUnavailable" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_node_flag_watches_only_that_nodes_pods(deployed: KubeCluster) -> None:
    apply_article(deployed)
    kubeconfig = deployed.service_account_kubeconfig(*AGENT_SA)

    def running_on(node: str) -> int:
        pods = kget(deployed, "pods", "-A", "--field-selector", f"spec.nodeName={node}")["items"]
        return len([p for p in pods if p["status"].get("phase") == "Running"])

    wait_for(lambda: running_on("node-0") and running_on("node-1"), "pods on both nodes")
    for node in deployed.kubelet.nodes:
        done = k8s_watch("--kubeconfig", str(kubeconfig), "--node", node)
        assert done.returncode == 0, done.stderr
        assert counts(done.stdout)["pods"] == running_on(node), (node, done.stdout)
