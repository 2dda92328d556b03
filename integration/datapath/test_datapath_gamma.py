"""GAMMA in the kernel: a consumer route steers only its own namespace's pods.

The model is built from real objects (Service, EndpointSlice, Pods at the
test node's pod addresses, an HTTPRoute), the planner plans it, and the
datapath steers connections in network namespaces; a stand-in proxy in the
node proxy's cgroup reports which connections reach it. A producer route on
the same Service then steers every client.
"""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh.ebpf.planner import plan
from nodemesh.model.store import MeshStore

from .conftest import Datapath
from .node import MeshNode, Pod

pytestmark = pytest.mark.privileged

VIP = "10.96.0.10"
ROUTE_GROUP = "gateway.networking.k8s.io"


def _objects(pods: list[Pod], backend: Pod, route_namespace: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "httpbin", "namespace": "default"},
            "spec": {"clusterIP": VIP, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "httpbin-1",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "httpbin"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 8080}],
            "endpoints": [{"addresses": [backend.ip], "conditions": {"ready": True}}],
        },
        {
            "apiVersion": f"{ROUTE_GROUP}/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "mine", "namespace": route_namespace},
            "spec": {
                "parentRefs": [
                    {"group": "", "kind": "Service", "name": "httpbin", "namespace": "default"}
                ],
                "rules": [
                    {"backendRefs": [{"name": "httpbin", "namespace": "default", "port": 80}]}
                ],
            },
        },
    ]
    for pod in pods:
        found.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": pod.namespace},
                "status": {"phase": "Running", "podIP": pod.ip},
            }
        )
    return found


def _backends(node: MeshNode, pod: Pod) -> set[str]:
    out: list[dict[str, Any]] = node.client(pod, "tcp-client", VIP, "80", "5")  # type: ignore[assignment]
    assert [r for r in out if "error" in r] == []
    return {r["backend"] for r in out}


def test_consumer_route_steers_its_namespace_only(node: MeshNode, datapath: Datapath) -> None:
    consumer, other, b1 = (
        node.add_pod("web", "curl"),
        node.add_pod("default", "other"),
        node.add_pod("default", "b1"),
    )
    node.server(b1, "tcp-server", "8080", "b1")
    pods = [consumer, other, b1]

    store = MeshStore()
    for obj in _objects(pods, b1, route_namespace="web"):
        store.apply("test", obj)
    consumer_plan = plan(store.build())
    [steer] = consumer_plan.redirects
    assert not steer.all_clients and [c.pod for c in steer.clients] == ["web/curl"]
    node.server(None, "origdst-server", str(steer.proxy_port), cgroup=node.proxy_cgroup)
    datapath.apply(consumer_plan)
    assert _backends(node, consumer) == {"proxy"}
    assert _backends(node, other) == {"b1"}

    # The same route as a producer route (the Service's namespace): everyone.
    store = MeshStore()
    for obj in _objects(pods, b1, route_namespace="default"):
        store.apply("test", obj)
    producer_plan = plan(store.build())
    [steer_all] = producer_plan.redirects
    assert steer_all.all_clients and steer_all.proxy_port == steer.proxy_port
    datapath.apply(producer_plan)
    assert _backends(node, consumer) == {"proxy"}
    assert _backends(node, other) == {"proxy"}
