"""Synthetic clusters for benchmarks: N Services, each with one EndpointSlice."""

from __future__ import annotations

from collections.abc import Iterator

from tests.support import factory

from .store import Obj


def service(ns: str, name: str, ip: str) -> Obj:
    app = {"app": name}
    ports = [factory.port(80, name="http", protocol="TCP", target=8080)]
    return factory.k8s_service(
        name, ns, cluster_ip=ip, ports=ports, selector=app, labels=app, clusterIPs=[ip]
    )


def endpoint_slice(ns: str, service_name: str, addresses: list[str], node: str = "node-a") -> Obj:
    endpoints = [
        factory.endpoint(
            addr,
            ready=True,
            serving=True,
            terminating=False,
            node=node,
            pod={"kind": "Pod", "namespace": ns, "name": f"{service_name}-{i}"},
        )
        for i, addr in enumerate(addresses)
    ]
    ports = [factory.port(8080, name="http", protocol="TCP")]
    return factory.endpoint_slice(
        service_name, endpoints, ns, name=f"{service_name}-abcde", ports=ports
    )


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
