"""Who an address is: pods, Services and workloads, resolved through the mesh model.

A `Resolver` is built once per model version (the model is immutable) and
answers from dicts, so enriching a flow costs a few lookups. What the model
does not know stays an address, labelled as Cilium labels its reserved
identities: `reserved:host` for the node's own loopback, `reserved:world`
for anything else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace

from nodemesh.model.objects import Deployment, Pod, ServiceName
from nodemesh.model.snapshot import MeshModel


@dataclass(frozen=True, slots=True)
class Who:
    """One side of a flow, as far as the model knows it."""

    address: str
    namespace: str = ""
    pod: str = ""
    workload: str = ""
    service: ServiceName | None = None
    labels: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The most specific name an operator would recognise."""
        if self.pod:
            return f"{self.namespace}/{self.pod}"
        if self.workload:
            return f"{self.namespace}/{self.workload}"
        if self.service is not None:
            return str(self.service)
        return self.address


def _reserved(address: str) -> tuple[str, ...]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ("reserved:unknown",)
    if ip.is_unspecified:
        return ()  # not known yet (a kernel event at connect()): the identity says who
    return ("reserved:host",) if ip.is_loopback else ("reserved:world",)


def _workload_of(labels: dict[str, str], deployments: Iterable[Deployment]) -> str:
    for deployment in deployments:
        if deployment.selector.matches(labels):
            return deployment.ref.name
    return ""


class Resolver:
    """Address -> Who for one model version."""

    def __init__(self, model: MeshModel) -> None:
        self.version = model.version
        by_ns: dict[str, list[Deployment]] = {}
        for deployment in model.deployments:
            by_ns.setdefault(deployment.ref.namespace, []).append(deployment)
        self._pods: dict[str, Who] = {}
        self._pods_by_name: dict[str, Who] = {}
        self.pod_names: set[tuple[str, str]] = {(p.ref.namespace, p.ref.name) for p in model.pods}
        self.workload_names = {d.ref.name for d in model.deployments}
        for pod in model.pods:
            self._add_pod(pod, by_ns.get(pod.ref.namespace, ()))
        # A Service's workload: the Deployment whose pod template its selector selects.
        self._services: dict[ServiceName, Who] = {}
        for name, service in model.services.items():
            labels = dict(service.selector or ())
            workload = ""
            if labels:
                for deployment in by_ns.get(name.namespace, ()):
                    template = dict(deployment.template_labels)
                    if all(template.get(k) == v for k, v in labels.items()):
                        workload = deployment.ref.name
                        break
            tags = tuple(f"k8s:{k}={v}" for k, v in labels.items())
            self._services[name] = Who("", name.namespace, "", workload, name, tags)
        # VIP:port -> Service, for kernel events that name what the app asked for.
        self._vips: dict[tuple[str, int], ServiceName] = {
            (ip, port.port): name
            for name, service in model.services.items()
            for ip in service.cluster_ips
            for port in service.ports
        }
        # Backend ip:port -> the narrowest Service it serves (fewest backends:
        # "httpbin-v1" rather than "httpbin", which selects both versions).
        self._backends: dict[tuple[str, int], tuple[int, ServiceName, str | None]] = {}
        for name, ports in model.backends.items():
            count = sum(len(b) for b in ports.values())
            for backends in ports.values():
                for backend in backends:
                    key = (backend.address, backend.port)
                    known = self._backends.get(key)
                    if backend.pod_name:
                        self.pod_names.add((name.namespace, backend.pod_name))
                    if known is None or (count, name) < known[:2]:
                        self._backends[key] = (count, name, backend.pod_name)

    def _add_pod(self, pod: Pod, deployments: Iterable[Deployment]) -> None:
        labels = dict(pod.labels)
        who = Who(
            "",
            pod.ref.namespace,
            pod.ref.name,
            _workload_of(labels, deployments),
            None,
            tuple(f"k8s:{k}={v}" for k, v in pod.labels),
        )
        self._pods_by_name[f"{pod.ref.namespace}/{pod.ref.name}"] = who
        for ip in pod.ips:
            self._pods[ip] = replace(who, address=ip)

    def unknown_pods(self, patterns: Iterable[str]) -> list[str]:
        """The pod filters ("ns/name" or "name") that name no pod the model knows."""
        unknown = []
        for pattern in patterns:
            namespace, slash, name = pattern.partition("/")
            if not slash:
                namespace, name = "", pattern
            if not name:
                continue  # "ns/": every pod of a namespace
            known = self.pod_names
            if not any(n == name and namespace in ("", ns) for ns, n in known):
                unknown.append(pattern)
        return unknown

    def service_at(self, address: str, port: int) -> ServiceName | None:
        """The Service whose cluster IP and port these are."""
        return self._vips.get((address, port))

    def pod(self, key: str, address: str = "") -> Who | None:
        """Pod "namespace/name" (a kernel event's client, found by its cgroup)."""
        known = self._pods_by_name.get(key)
        return replace(known, address=address) if known is not None else None

    def source(self, address: str) -> Who:
        """A client: a pod by its IP, else a reserved identity."""
        known = self._pods.get(address)
        return known if known is not None else Who(address, labels=_reserved(address))

    def backend(self, address: str, port: int, cluster: str = "") -> Who:
        """A server Envoy connected to: the pod and Service behind ip:port, else
        the Service the upstream cluster names ("ns/name" or "ns/name:port")."""
        pod = self._pods.get(address)
        backend = self._backends.get((address, port))
        service_name = backend[1] if backend is not None else _service_of_cluster(cluster)
        service = self._services.get(service_name) if service_name is not None else None
        if pod is not None:
            workload = pod.workload or (service.workload if service else "")
            return Who(address, pod.namespace, pod.pod, workload, service_name, pod.labels)
        if service is not None:
            pod_name = backend[2] if backend is not None and backend[2] else ""
            return Who(
                address, service.namespace, pod_name, service.workload, service_name, service.labels
            )
        return Who(address, labels=_reserved(address))


def _service_of_cluster(cluster: str) -> ServiceName | None:
    namespace, slash, rest = cluster.partition("/")
    if not slash or not namespace or not rest:
        return None
    return ServiceName(namespace, rest.partition(":")[0])
