"""Synthetic clusters for benchmarks: N Services, each with one EndpointSlice."""

from __future__ import annotations

from collections.abc import Iterator

from .store import Obj


def service(ns: str, name: str, ip: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "clusterIP": ip,
            "clusterIPs": [ip],
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    }


def endpoint_slice(ns: str, service_name: str, addresses: list[str], node: str = "node-a") -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-abcde",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [addr],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": ns, "name": f"{service_name}-{i}"},
            }
            for i, addr in enumerate(addresses)
        ],
    }


def synthetic_cluster(services: int, endpoints_per_service: int) -> Iterator[Obj]:
    """`services` Services in 10 namespaces, with `endpoints_per_service` each."""
    for i in range(services):
        ns, name = f"ns{i % 10}", f"svc{i}"
        yield service(ns, name, f"10.96.{i // 250}.{i % 250 + 1}")
        base = i * endpoints_per_service
        addrs = [
            f"10.{64 + (base + j) // 65536}.{(base + j) // 256 % 256}.{(base + j) % 256}"
            for j in range(endpoints_per_service)
        ]
        yield endpoint_slice(ns, name, addrs)
