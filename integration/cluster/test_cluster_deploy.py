"""deploy/ and the article's YAML against a real kube-apiserver: the CRDs'
structural schemas, RBAC and DaemonSets are accepted as a user installs them,
the real scheduler places the pods, and the real EndpointSlice controller
turns the article's Deployments into EndpointSlices."""

from __future__ import annotations

import pytest

from integration.cluster.cluster_support import apply_article, kget, ready_endpoints, wait_for
from integration.cluster.kube_cluster import KubeCluster

pytestmark = pytest.mark.k8s

CRDS = (
    "ciliumenvoyconfigs.cilium.io",
    "ciliumclusterwideenvoyconfigs.cilium.io",
    "ciliumnetworkpolicies.cilium.io",
    "ciliumclusterwidenetworkpolicies.cilium.io",
)


def test_deploy_is_accepted_and_its_daemonsets_run_on_every_node(deployed: KubeCluster) -> None:
    for name in CRDS:
        crd = kget(deployed, "crd", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True", name
        assert conditions.get("NonStructuralSchema") is None, (name, crd["status"]["conditions"])
        (served,) = [v for v in crd["spec"]["versions"] if v["served"]]
        assert "status" in served["subresources"], f"{name}: conditions need the status subresource"

    def daemonsets_ready() -> dict[str, int] | None:
        items = kget(deployed, "daemonsets", "-n", "nodemesh-system")["items"]
        ready = {d["metadata"]["name"]: d["status"].get("numberReady", 0) for d in items}
        return (
            ready
            if len(ready) == 2 and all(n == len(deployed.kubelet.nodes) for n in ready.values())
            else None
        )

    ready = wait_for(daemonsets_ready, "both DaemonSets Ready on every node")
    assert set(ready) == {"nodemesh-agent", "nodemesh-envoy"}


def test_article_yaml_is_accepted_verbatim_and_endpointslices_follow(deployed: KubeCluster) -> None:
    apply_article(deployed)
    cec = kget(deployed, "ciliumenvoyconfigs", "httpbin-traffic-split", "-n", "default")
    assert cec["spec"]["services"] == [{"name": "httpbin", "namespace": "default"}]
    kget(deployed, "ciliumnetworkpolicies", "httpbin-l7-policy", "-n", "default")

    pods = wait_for(
        lambda: [
            p
            for p in kget(deployed, "pods", "-l", "app=httpbin")["items"]
            if p["status"].get("podIP")
        ],
        "the httpbin pods to be scheduled and running",
    )
    ips = sorted(p["status"]["podIP"] for p in pods)
    assert {p["spec"]["nodeName"] for p in pods} <= set(deployed.kubelet.nodes)
    wait_for(
        lambda: ready_endpoints(deployed, "httpbin") == ips,
        "httpbin's EndpointSlices to list every pod",
    )
    v1 = [p["status"]["podIP"] for p in pods if p["metadata"]["labels"]["version"] == "v1"]
    wait_for(
        lambda: ready_endpoints(deployed, "httpbin-v1") == sorted(v1), "httpbin-v1's EndpointSlices"
    )


BAD_CEC = """
apiVersion: cilium.io/v2
kind: CiliumEnvoyConfig
metadata:
  name: not-a-list
  namespace: default
spec:
  services: httpbin
"""


def test_rejected_objects_carry_the_servers_own_message(deployed: KubeCluster) -> None:
    done = deployed.kubectl("apply", "-f", "-", stdin=BAD_CEC, check=False)
    print(f"kube-apiserver said: {done.stderr.strip()}")  # the test output shows the server's words
    assert done.returncode != 0
    assert (
        'spec.services: Invalid value: "string": spec.services in body must be of type array'
        in done.stderr
    )
