"""Service clusters: one EDS Cluster and one ClusterLoadAssignment per Service port.

Service clusters are shared by every CEC and redirect that routes to the
Service. They are named "<namespace>/<name>" when the Service has one port and
"<namespace>/<name>:<port>" otherwise, which is also how users refer to them
in routes ("<namespace>/<name>:<port>" is accepted for a one-port Service too).
Endpoints come over ADS (EDS, API v3), so an endpoint change touches only the
ClusterLoadAssignment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from operator import attrgetter

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2

from nodemesh.model.objects import Service, ServiceName
from nodemesh.model.snapshot import BackendAddress
from nodemesh.xds.translate.errors import ResourceError
from nodemesh.xds.translate.registry import pack
from nodemesh.xds.translate.result import ServiceCluster

# DNS-1123 labels, as Kubernetes names namespaces and Services; port by number or name.
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
SERVICE_REF = re.compile(rf"^({_LABEL})/({_LABEL})(?::([0-9]+|{_LABEL}))?$")


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A cluster name in a user resource that names a Service ("ns/name[:port]")."""

    raw: str
    service: ServiceName
    port: str | None  # as written: a number, a port name, or None


def parse_service_ref(raw: str) -> ServiceRef | None:
    match = SERVICE_REF.match(raw)
    if match is None:
        return None
    return ServiceRef(raw, ServiceName(match[1], match[2]), match[3])


def cluster_name(service: Service, port: int) -> str:
    """The shared cluster name of one port of a Service."""
    base = f"{service.ref.namespace}/{service.ref.name}"
    return base if len(service.ports) == 1 else f"{base}:{port}"


# appProtocol values (Kubernetes' standard ones and common names) that mean the
# backends speak HTTP/2 without TLS: gRPC through the node Envoy needs it.
HTTP2_APP_PROTOCOLS = frozenset({"grpc", "h2c", "http2", "kubernetes.io/h2c"})


def service_cluster(service: Service, port: int) -> ServiceCluster:
    """The shared cluster of one port of a Service."""
    app_protocol = next((p.app_protocol for p in service.ports if p.port == port), None)
    http2 = (app_protocol or "").lower() in HTTP2_APP_PROTOCOLS
    return ServiceCluster(cluster_name(service, port), service.service_name, port, http2)


def resolve_port(service: Service, port: str | None) -> int:
    """The Service port a reference means, or ResourceError("", reason)."""
    numbers = [p.port for p in service.ports]
    if port is None:
        if len(numbers) == 1:
            return numbers[0]
        listed = ", ".join(str(n) for n in numbers) or "none"
        raise ResourceError(
            "",
            f"Service {service.service_name} has ports {listed}: name one as "
            f"{service.service_name}:<port>",
        )
    for candidate in service.ports:
        if str(candidate.port) == port or candidate.name == port:
            return candidate.port
    raise ResourceError("", f"Service {service.service_name} has no port {port!r}")


def _cluster_prototype(connect_timeout_ms: int) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(type=cluster_pb2.Cluster.EDS)
    cluster.connect_timeout.FromMilliseconds(connect_timeout_ms)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    cluster.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    return cluster


_PROTOTYPES: dict[int, cluster_pb2.Cluster] = {}


def _http2_options() -> any_pb2.Any:
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.SetInParent()
    return pack(options)


_HTTP2 = _http2_options()
_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def build_cluster(cluster_of: ServiceCluster, connect_timeout_ms: int) -> cluster_pb2.Cluster:
    """The EDS cluster of one Service port (copied from a prototype: thousands
    of them differ only in name)."""
    prototype = _PROTOTYPES.get(connect_timeout_ms)
    if prototype is None:
        prototype = _cluster_prototype(connect_timeout_ms)
        _PROTOTYPES[connect_timeout_ms] = prototype
    cluster = cluster_pb2.Cluster()
    cluster.CopyFrom(prototype)
    cluster.name = cluster_of.name
    cluster.eds_cluster_config.service_name = cluster_of.name
    if cluster_of.http2:
        cluster.typed_extension_protocol_options[_PROTOCOL_OPTIONS].CopyFrom(_HTTP2)
    return cluster


_HEALTHY = int(health_check_pb2.HEALTHY)
# Terminating but still serving: Envoy uses it only when nothing else is left.
_DRAINING = int(health_check_pb2.DRAINING)
_ORDER = attrgetter("address", "port")


def build_load_assignment(
    name: str, backends: tuple[BackendAddress, ...]
) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints in a stable order (sorted), so equal input encodes equally.
    Not ready and not serving backends are left out.

    Endpoints are grouped by their EndpointSlice zone, one locality each
    (sorted; no zone given: an empty locality), weighted by how many
    endpoints it holds so every endpoint gets an equal share. gRPC's xDS
    client drops localities without a `load_balancing_weight`; Envoy ignores
    the weights unless a cluster asks for locality-weighted balancing."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    if not backends:
        return assignment
    groups: dict[str, endpoint_components_pb2.LocalityLbEndpoints] = {}
    for backend in sorted(backends, key=_ORDER):
        if backend.ready:
            health = _HEALTHY
        elif backend.serving:
            health = _DRAINING
        else:
            continue
        zone = backend.zone or ""
        group = groups.get(zone)
        if group is None:
            group = groups[zone] = endpoint_components_pb2.LocalityLbEndpoints()
            group.locality.zone = zone
        entry = group.lb_endpoints.add()
        socket = entry.endpoint.address.socket_address
        socket.address = backend.address
        socket.port_value = backend.port
        entry.health_status = health
    for zone in sorted(groups):
        group = groups[zone]
        group.load_balancing_weight.value = len(group.lb_endpoints)
        assignment.endpoints.append(group)
    return assignment
