"""One factory for the objects tests and benches feed nodemesh.

Two families, both small and composable:
- manifests: the raw Kubernetes objects a source reads (Service,
  EndpointSlice, Pod, CiliumEnvoyConfig) as plain dicts, built from
  `port`, `endpoint` and `route_config` pieces;
- typed model objects: `service`, `backend` and `mesh_model` for code that
  starts from a `MeshModel` (the translator, the planner).

Every builder emits only the fields it is given (plus the few a valid object
needs), so a test states exactly what its object holds. Keyword arguments
with defaults keep the call sites short.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from nodemesh.model.objects import (
    EnvoyConfig,
    EnvoyResource,
    Kind,
    L7Redirect,
    ObjectRef,
    Pod,
    RedirectedService,
    Service,
    ServiceName,
    ServicePort,
    pairs,
)
from nodemesh.model.snapshot import BackendAddress, MeshModel

Manifest = dict[str, Any]
Backends = Mapping[ServiceName, Mapping[int, tuple[BackendAddress, ...]]]

ROUTE_CONFIG = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


# -- manifests -------------------------------------------------------------------


def metadata(
    name: str,
    namespace: str = "default",
    *,
    labels: Mapping[str, str] | None = None,
    **extra: Any,
) -> Manifest:
    """`metadata`: name, namespace, labels if given, then any other field."""
    meta: Manifest = {"name": name, "namespace": namespace}
    if labels is not None:
        meta["labels"] = dict(labels)
    meta.update(extra)
    return meta


def port(
    number: Any = 80,
    *,
    name: str | None = None,
    target: int | None = None,
    protocol: str | None = None,
) -> Manifest:
    """A Service or EndpointSlice port. `number` is Any: tests feed bad values."""
    out: Manifest = {}
    if name is not None:
        out["name"] = name
    out["port"] = number
    if protocol is not None:
        out["protocol"] = protocol
    if target is not None:
        out["targetPort"] = target
    return out


def k8s_service(
    name: str,
    namespace: str = "default",
    *,
    cluster_ip: str | None = None,
    ports: Sequence[Manifest] | None = None,
    selector: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    **spec: Any,
) -> Manifest:
    """A v1 Service; one port 80 unless `ports` says otherwise."""
    body: Manifest = {}
    if cluster_ip is not None:
        body["clusterIP"] = cluster_ip
    body["ports"] = [dict(p) for p in ports] if ports is not None else [port(80)]
    if selector is not None:
        body["selector"] = dict(selector)
    body.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, namespace, labels=labels),
        "spec": body,
    }


def endpoint(
    address: str,
    *,
    ready: bool | None = None,
    node: str | None = None,
    pod: str | Mapping[str, str] | None = None,
    **conditions: bool,
) -> Manifest:
    """One EndpointSlice endpoint; conditions only if given (`ready`, or
    `serving=...`/`terminating=...` as keywords); `pod` is its targetRef (a
    name, or the whole reference)."""
    out: Manifest = {"addresses": [address]}
    given = ({"ready": ready} if ready is not None else {}) | conditions
    if given:
        out["conditions"] = given
    if node is not None:
        out["nodeName"] = node
    if pod is not None:
        out["targetRef"] = {"name": pod} if isinstance(pod, str) else dict(pod)
    return out


def endpoint_slice(
    service_name: str,
    endpoints: Iterable[Manifest | str],
    namespace: str = "default",
    *,
    name: str | None = None,
    ports: Sequence[Manifest] | None = None,
    address_type: str = "IPv4",
) -> Manifest:
    """A discovery/v1 EndpointSlice of `service_name`; a bare string is an
    endpoint with just that address. One port 80 unless `ports` is given."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata(
            name or f"{service_name}-slice",
            namespace,
            labels={SERVICE_NAME_LABEL: service_name},
        ),
        "addressType": address_type,
        "ports": [dict(p) for p in ports] if ports is not None else [port(80)],
        "endpoints": [endpoint(e) if isinstance(e, str) else e for e in endpoints],
    }


def k8s_pod(
    name: str,
    namespace: str = "default",
    *,
    ip: str | None = None,
    labels: Mapping[str, str] | None = None,
    node: str | None = None,
    phase: str | None = "Running",
    ips: Sequence[str] | None = None,
    **meta: Any,
) -> Manifest:
    """A v1 Pod: spec.nodeName and status (phase, podIP, podIPs) only if given."""
    pod: Manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(name, namespace, labels=labels, **meta),
    }
    if node is not None:
        pod["spec"] = {"nodeName": node}
    status: Manifest = {}
    if phase is not None:
        status["phase"] = phase
    if ip is not None:
        status["podIP"] = ip
    if ips is not None:
        status["podIPs"] = [{"ip": i} for i in ips]
    if status:
        pod["status"] = status
    return pod


def route_config(name: str = "r", cluster: str | None = None, *, host: str = "vh") -> Manifest:
    """A RouteConfiguration CEC resource: every path to `cluster`, or no
    virtual host at all when `cluster` is None."""
    hosts: list[Manifest] = []
    if cluster is not None:
        hosts.append(
            {
                "name": host,
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
            }
        )
    return {"@type": ROUTE_CONFIG, "name": name, "virtual_hosts": hosts}


def cec(
    name: str,
    namespace: str = "default",
    *,
    services: Iterable[str | Manifest] = (),
    resources: Sequence[Manifest] | None = None,
    created: str = "",
    **meta: Any,
) -> Manifest:
    """A CiliumEnvoyConfig; a string service is `{"name": s}`. Without
    `resources`, one empty route configuration named "routes"."""
    if created:
        meta["creationTimestamp"] = created
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEnvoyConfig",
        "metadata": metadata(name, namespace, **meta),
        "spec": {
            "services": [{"name": s} if isinstance(s, str) else dict(s) for s in services],
            "resources": list(resources) if resources is not None else [route_config("routes")],
        },
    }


# -- typed model objects ----------------------------------------------------------


def service_port(
    port: int, *, target: int | str | None = None, name: str | None = None, protocol: str = "TCP"
) -> ServicePort:
    """A model Service port; named p<port> and targeting `port` by default."""
    return ServicePort(
        name if name is not None else f"p{port}",
        port,
        protocol,
        target if target is not None else port,
    )


def service(
    name: str,
    *ports: int | ServicePort,
    ip: str = "",
    namespace: str = "default",
    selector: Mapping[str, str] | None = None,
) -> Service:
    """A model Service selecting app=`name` unless `selector` is given;
    headless unless `ip`. A bare int port is `service_port(int)`."""
    return Service(
        ref=ObjectRef(Kind.SERVICE, namespace, name),
        cluster_ips=(ip,) if ip else (),
        ports=tuple(service_port(p) if isinstance(p, int) else p for p in ports),
        selector=pairs(selector if selector is not None else {"app": name}),
    )


def backend(
    address: str,
    port: int,
    ready: bool = True,
    *,
    node: str | None = "node-1",
    pod: str | None = None,
) -> BackendAddress:
    """A backend on `node` (of `pod`); not ready means not serving and terminating."""
    return BackendAddress(address, port, node, pod, ready, ready, not ready)


def envoy_resource(type_url: str, index: int, body: Mapping[str, Any]) -> EnvoyResource:
    """spec.resources[index] of a CEC, named as the parser names it."""
    return EnvoyResource(
        type_url=type_url,
        name=str(body.get("name", body.get("cluster_name", ""))),
        body=json.dumps(body, sort_keys=True, separators=(",", ":")),
        field=f"spec.resources[{index}]",
    )


def envoy_config(
    ref: ObjectRef,
    resources: Sequence[tuple[str, Mapping[str, Any]]],
    services: Sequence[ServiceName] = (),
    created: str = "2026-01-01T00:00:00Z",
) -> EnvoyConfig:
    """A parsed CEC redirecting `services`, holding (type URL, body) resources."""
    return EnvoyConfig(
        ref=ref,
        services=tuple(RedirectedService(s) for s in services),
        backend_services=(),
        resources=tuple(envoy_resource(t, i, b) for i, (t, b) in enumerate(resources)),
        creation_timestamp=created,
    )


def mesh_model(
    services: Sequence[Service] = (),
    backends: Backends | None = None,
    configs: Sequence[EnvoyConfig] = (),
    redirects: Sequence[L7Redirect] = (),
    version: str = "v1",
    *,
    generation: int = 1,
    pods: Sequence[Pod] = (),
) -> MeshModel:
    """A MeshModel of the given objects (read-only mappings, as the store builds)."""
    return MeshModel(
        version=version,
        generation=generation,
        services=MappingProxyType({s.service_name: s for s in services}),
        pods=tuple(pods),
        envoy_configs=tuple(configs),
        redirects=tuple(redirects),
        backends=MappingProxyType(
            {k: MappingProxyType(dict(v)) for k, v in (backends or {}).items()}
        ),
    )
