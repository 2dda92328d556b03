"""The one parser every source shares: Kubernetes-shaped dicts to model objects.

Input is what YAML or the API server's JSON gives (nested dicts and lists);
output is a frozen object from `nodemesh.model.objects`, or a `ParseError`
naming the object, the field path and the reason. Kinds the mesh does not
model raise `UnknownKindError` so a source can log and skip them.

Parsing is a pure function of the input: the same dict always yields an equal
object, which is what makes the model's content hash stable.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nodemesh.model import parse_cilium, parse_gateway, parse_policy
from nodemesh.model.errors import ParseError, UnknownKindError
from nodemesh.model.fields import Fields, check_ip, unusable_endpoint
from nodemesh.model.objects import (
    ContainerPort,
    Deployment,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    EnvoyConfig,
    Kind,
    NetworkPolicy,
    ObjectRef,
    ObjectWarning,
    Pod,
    Service,
    ServicePort,
    pairs,
)
from nodemesh.model.policy import KubeNetworkPolicy, Namespace
from nodemesh.model.routes import ReferenceGrant, Route

ModelObject = (
    Service
    | EndpointSlice
    | Deployment
    | Pod
    | EnvoyConfig
    | NetworkPolicy
    | Route
    | ReferenceGrant
    | KubeNetworkPolicy
    | Namespace
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# kind -> (API group, versions read). cilium.io/v2alpha1 is where Cilium 1.12-1.14
# served CiliumEnvoyConfig; its schema is the same.
_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    Kind.SERVICE: ("", ("v1",)),
    Kind.POD: ("", ("v1",)),
    Kind.ENDPOINT_SLICE: ("discovery.k8s.io", ("v1",)),
    Kind.DEPLOYMENT: ("apps", ("v1",)),
    Kind.ENVOY_CONFIG: ("cilium.io", ("v2", "v2alpha1")),
    Kind.CLUSTERWIDE_ENVOY_CONFIG: ("cilium.io", ("v2", "v2alpha1")),
    Kind.NETWORK_POLICY: ("cilium.io", ("v2",)),
    Kind.CLUSTERWIDE_NETWORK_POLICY: ("cilium.io", ("v2",)),
    Kind.HTTP_ROUTE: (parse_gateway.GROUP, ("v1",)),
    Kind.GRPC_ROUTE: (parse_gateway.GROUP, ("v1",)),
    Kind.REFERENCE_GRANT: (parse_gateway.GROUP, ("v1beta1",)),
    Kind.KUBE_NETWORK_POLICY: ("networking.k8s.io", ("v1",)),
    Kind.NAMESPACE: ("", ("v1",)),
}

# DNS-1123 subdomain: what Kubernetes allows for object names. It also keeps
# "/" out of names, which the qualified Envoy resource names rely on.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
_NO_CONDITIONS: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class ParseResult:
    """A parsed object and what is worth telling about it (deprecated fields)."""

    obj: ModelObject
    warnings: tuple[ObjectWarning, ...] = ()


def object_ref(raw: Mapping[str, Any]) -> ObjectRef:
    """Which object `raw` is. Namespaced kinds without a namespace are in "default"."""
    if not isinstance(raw, Mapping):
        raise ParseError(None, "", "a Kubernetes object must be a mapping")
    top = Fields(None, raw)
    api_version = top.opt_str("apiVersion", "") or ""
    kind_name = top.opt_str("kind", "") or ""
    meta = top.opt_map("metadata") or Fields(None, {}, "metadata")
    name = meta.opt_str("name", "") or ""
    namespace = meta.opt_str("namespace", "") or ""
    known = _KINDS.get(kind_name)
    group, _, version = api_version.rpartition("/")
    if known is None:
        raise UnknownKindError(api_version, kind_name, namespace, name)
    if known[0] != group or version not in known[1]:
        expected = " or ".join(f"{known[0]}/{v}".lstrip("/") for v in known[1])
        raise UnknownKindError(api_version, kind_name, namespace, name, expected)
    kind = Kind(kind_name)
    if not name:
        raise ParseError(None, "metadata.name", f"is required (a {kind.value} without a name)")
    namespace = "" if kind.cluster_scoped else namespace or "default"
    ref = ObjectRef(kind, namespace, name)
    if len(name) > 253 or not _NAME.fullmatch(name):
        raise ParseError(ref, "metadata.name", f"{name!r} is not a valid Kubernetes name")
    if namespace and (len(namespace) > 63 or not _NAME.fullmatch(namespace) or "." in namespace):
        raise ParseError(ref, "metadata.namespace", f"{namespace!r} is not a valid namespace")
    return ref


def parse_object(raw: Mapping[str, Any], ref: ObjectRef | None = None) -> ParseResult:
    """Parse one raw object. Raises ParseError (UnknownKindError for other kinds).

    `ref`, when the caller already has it from `object_ref(raw)`, saves reading
    it again."""
    if ref is None:
        ref = object_ref(raw)
    top = Fields(ref, raw)
    return _PARSERS[ref.kind](ref, top)


def creation_timestamp(meta: Fields) -> str:
    """metadata.creationTimestamp as RFC 3339; YAML turns bare timestamps into
    datetimes, so both spellings give the same string."""
    value = meta.data.get("creationTimestamp")
    if value is None:
        return ""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if not isinstance(value, str):
        raise meta.error("creationTimestamp", "must be an RFC 3339 timestamp")
    return value


def labels_of(top: Fields) -> dict[str, str]:
    meta = top.opt_map("metadata")
    return {} if meta is None else meta.str_map("labels")


def _service(ref: ObjectRef, top: Fields) -> ParseResult:
    spec = top.req_map("spec")
    svc_type = spec.opt_str("type", "ClusterIP") or "ClusterIP"
    if svc_type not in _SERVICE_TYPES:
        raise spec.error("type", f"must be one of {', '.join(_SERVICE_TYPES)}")
    ports = tuple(_service_port(p) for p in spec.maps("ports"))
    if len(ports) > 1:
        names = [p.name for p in ports]
        for index, port in enumerate(ports):
            where = f"spec.ports[{index}].name"
            if not port.name:
                raise ParseError(ref, where, "is required when a Service has several ports")
            if names.index(port.name) != index:
                raise ParseError(ref, where, f"{port.name!r} names two ports")
    seen: set[tuple[int, str]] = set()
    for index, port in enumerate(ports):
        if (port.port, port.protocol) in seen:
            raise ParseError(ref, f"spec.ports[{index}].port", f"{port.port}/{port.protocol} twice")
        seen.add((port.port, port.protocol))
    selector = spec.str_map("selector")
    obj = Service(
        ref=ref,
        cluster_ips=_cluster_ips(spec),
        ports=ports,
        # An empty selector means "no selector" in Kubernetes: endpoints by hand.
        selector=pairs(selector) if selector else None,
        type=svc_type,
        labels=pairs(labels_of(top)),
    )
    warnings: tuple[ObjectWarning, ...] = ()
    if ports and all(p.protocol == "SCTP" for p in ports):
        reason = (
            "every port is SCTP, which nodemesh neither translates in the kernel nor "
            "proxies in Envoy: connections to this Service are not served by the mesh"
        )
        warnings = (ObjectWarning(ref, "spec.ports", reason),)
    return ParseResult(obj, warnings)


def _cluster_ips(spec: Fields) -> tuple[str, ...]:
    if spec.has("clusterIPs"):
        raw_ips = list(spec.items("clusterIPs"))
    elif spec.has("clusterIP"):
        raw_ips = [(f"{spec.path}.clusterIP", spec.data["clusterIP"])]
    else:
        # Not yet allocated (e.g. written by hand): no VIP, still a valid Service.
        return ()
    if [ip for _, ip in raw_ips] in (["None"], [""]):
        return ()  # headless
    return tuple(check_ip(spec.ref, path, ip) for path, ip in raw_ips)


def _service_port(port: Fields) -> ServicePort:
    number = port.port("port")
    assert number is not None
    protocol = _protocol(port)
    target: int | str
    raw_target = port.data.get("targetPort")
    if raw_target is None:
        target = number
    elif isinstance(raw_target, str) and raw_target:
        target = raw_target
    else:
        target_number = port.port("targetPort")
        assert target_number is not None
        target = target_number
    return ServicePort(
        name=port.opt_str("name", "") or "",
        port=number,
        protocol=protocol,
        target_port=target,
        app_protocol=port.opt_str("appProtocol"),
    )


def _protocol(port: Fields) -> str:
    protocol = port.opt_str("protocol", "TCP") or "TCP"
    if protocol not in _PROTOCOLS:
        raise port.error("protocol", f"must be one of {', '.join(_PROTOCOLS)}")
    return protocol


def _endpoint_slice(ref: ObjectRef, top: Fields) -> ParseResult:
    address_type = top.req_str("addressType")
    if address_type not in _ADDRESS_TYPES:
        raise top.error("addressType", f"must be one of {', '.join(_ADDRESS_TYPES)}")
    ports = []
    for port in top.maps("ports"):
        number = port.port("port")
        assert number is not None
        ports.append(EndpointPort(port.opt_str("name", "") or "", number, _protocol(port)))
    raw_endpoints = top.data.get("endpoints") or []
    if not isinstance(raw_endpoints, list):
        raise top.error("endpoints", "must be a list")
    endpoints = tuple(
        _endpoint(ref, index, entry, address_type) for index, entry in enumerate(raw_endpoints)
    )
    obj = EndpointSlice(
        ref=ref,
        service_name=labels_of(top).get(SERVICE_NAME_LABEL, ""),
        address_type=address_type,
        ports=tuple(ports),
        endpoints=endpoints,
    )
    return ParseResult(obj)


def _endpoint(ref: ObjectRef, index: int, data: Any, address_type: str) -> Endpoint:
    # The hot loop of a big mesh (50,000 of these): plain dict reads and
    # exact type checks; anything unusual takes the slow path, which raises
    # naming the field or accepts what is merely unusual.
    try:
        addresses = data["addresses"]
        conditions = data.get("conditions")
        if conditions is None:
            conditions = _NO_CONDITIONS
        ready = conditions.get("ready")
        serving = conditions.get("serving")
        terminating = conditions.get("terminating")
        node_name = data.get("nodeName")
        zone = data.get("zone")
        target = data.get("targetRef")
    except (KeyError, TypeError, AttributeError):
        return _endpoint_slow(ref, index, data, address_type)
    pod_name = None
    if target is not None:
        if type(target) is not dict:
            return _endpoint_slow(ref, index, data, address_type)
        if target.get("kind") == "Pod":
            pod_name = target.get("name")
    if (
        type(addresses) is not list
        or not addresses
        or (ready is not None and type(ready) is not bool)
        or (serving is not None and type(serving) is not bool)
        or (terminating is not None and type(terminating) is not bool)
        or (node_name is not None and type(node_name) is not str)
        or (zone is not None and type(zone) is not str)
        or (pod_name is not None and type(pod_name) is not str)
    ):
        return _endpoint_slow(ref, index, data, address_type)
    if len(addresses) == 1:  # what the EndpointSlice controller writes
        only = _fast_address(addresses[0], address_type)
        if only is None:
            return _endpoint_slow(ref, index, data, address_type)
        checked: tuple[str | None, ...] = (only,)
    else:
        checked = tuple([_fast_address(value, address_type) for value in addresses])
        if None in checked:
            return _endpoint_slow(ref, index, data, address_type)
    # Kubernetes: an unset `ready` is to be read as ready, an unset `serving`
    # as equal to `ready`, an unset `terminating` as not terminating.
    if ready is None:
        ready = True
    return Endpoint(
        checked,  # type: ignore[arg-type]  # no None: checked above
        ready,
        ready if serving is None else serving,
        terminating is True,
        node_name,
        pod_name,
        zone,
    )


def _endpoint_slow(ref: ObjectRef, index: int, data: Any, address_type: str) -> Endpoint:
    """The same reading through Fields: raises naming the bad field."""
    path = f"endpoints[{index}]"
    if not isinstance(data, Mapping):
        raise ParseError(ref, path, "must be a mapping")
    entry = Fields(ref, data, path)
    addresses = [_address(ref, p, value, address_type) for p, value in entry.items("addresses")]
    if not addresses:
        raise entry.error("addresses", "needs at least one address")
    conditions = entry.opt_map("conditions") or Fields(ref, {}, f"{path}.conditions")
    ready = conditions.opt_bool("ready")
    ready = True if ready is None else ready
    serving = conditions.opt_bool("serving")
    target = entry.opt_map("targetRef")
    pod_name = None
    # Only a Pod reference names a pod; other kinds (or junk) there are ignored.
    if target is not None and target.data.get("kind") == "Pod":
        pod_name = target.opt_str("name")
    return Endpoint(
        addresses=tuple(addresses),
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=bool(conditions.opt_bool("terminating")),
        node_name=entry.opt_str("nodeName"),
        pod_name=pod_name,
        zone=entry.opt_str("zone"),
    )


def _fast_address(value: Any, address_type: str) -> str | None:
    """The canonical address, or None for anything `_address` must explain."""
    if type(value) is not str:
        return None
    try:
        if address_type == "IPv4":
            # inet_pton takes only plain dotted quads (no leading zeros), so
            # what it accepts is already canonical.
            socket.inet_pton(socket.AF_INET, value)
            canonical = value
        elif address_type == "IPv6":
            canonical = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, value))
        else:
            return value or None
    except OSError:
        return None
    if unusable_endpoint(canonical) is not None:
        return None
    return canonical


def _address(ref: ObjectRef, path: str, value: Any, address_type: str) -> str:
    if address_type == "FQDN":
        if not isinstance(value, str) or not value:
            raise ParseError(ref, path, "must be a host name")
        return value
    address = check_ip(ref, path, value)
    if (":" in address) != (address_type == "IPv6"):
        raise ParseError(ref, path, f"{address} is not an {address_type} address")
    unusable = unusable_endpoint(address)
    if unusable is not None:
        raise ParseError(ref, path, f"{address} {unusable}: no backend can listen there")
    return address


def _deployment(ref: ObjectRef, top: Fields) -> ParseResult:
    spec = top.req_map("spec")
    replicas = spec.opt_int("replicas", 1)
    assert replicas is not None
    if replicas < 0:
        raise spec.error("replicas", "must not be negative")
    selector = spec.selector("selector")
    if selector is None:
        raise spec.error("selector", "is required")
    template = spec.opt_map("template") or Fields(ref, {}, "spec.template")
    pod_spec = template.opt_map("spec") or Fields(ref, {}, "spec.template.spec")
    container_ports: list[int] = []
    for container in pod_spec.maps("containers"):
        for port in container.maps("ports"):
            number = port.port("containerPort")
            assert number is not None
            container_ports.append(number)
    obj = Deployment(
        ref=ref,
        labels=pairs(labels_of(top)),
        replicas=replicas,
        selector=selector,
        template_labels=pairs(labels_of(template)),
        container_ports=tuple(container_ports),
    )
    return ParseResult(obj)


def _pod(ref: ObjectRef, top: Fields) -> ParseResult:
    spec = top.opt_map("spec") or Fields(ref, {}, "spec")
    status = top.opt_map("status") or Fields(ref, {}, "status")
    ips: list[str] = []
    for entry in status.maps("podIPs"):
        ips.append(check_ip(ref, f"{entry.path}.ip", entry.data.get("ip")))
    if not ips and status.has("podIP"):
        ips.append(check_ip(ref, "status.podIP", status.data["podIP"]))
    obj = Pod(
        ref=ref,
        labels=pairs(labels_of(top)),
        ips=tuple(ips),
        node_name=spec.opt_str("nodeName"),
        # Kubernetes' own default: a pod nobody has reported on is Pending.
        phase=status.opt_str("phase", "Pending") or "Pending",
        uid=_opt_meta_str(ref, top, "uid"),
        deleting=_deleting(ref, top),
        container_ports=_container_ports(spec),
        host_network=bool(spec.opt_bool("hostNetwork")),
    )
    return ParseResult(obj)


def _container_ports(spec: Fields) -> tuple[ContainerPort, ...]:
    """Named container ports only: what a policy's named port resolves to."""
    out = []
    for container in spec.maps("containers"):
        for port in container.maps("ports"):
            name = port.opt_str("name")
            if not name:
                continue
            number = port.port("containerPort")
            assert number is not None
            out.append(ContainerPort(name, number, _protocol(port)))
    return tuple(out)


def _deleting(ref: ObjectRef, top: Fields) -> bool:
    """metadata.deletionTimestamp set: the API server is deleting the pod."""
    meta = top.opt_map("metadata") or Fields(ref, {}, "metadata")
    value = meta.data.get("deletionTimestamp")
    if value is None:
        return False
    if not isinstance(value, str | datetime) or not value:
        raise meta.error("deletionTimestamp", "must be an RFC 3339 timestamp")
    return True


def _opt_meta_str(ref: ObjectRef, top: Fields, key: str) -> str | None:
    meta = top.opt_map("metadata") or Fields(ref, {}, "metadata")
    return meta.opt_str(key) or None


def _envoy_config(ref: ObjectRef, top: Fields) -> ParseResult:
    meta = top.opt_map("metadata") or Fields(ref, {}, "metadata")
    config, warnings = parse_cilium.envoy_config(ref, top, creation_timestamp(meta))
    return ParseResult(config, warnings)


def _network_policy(ref: ObjectRef, top: Fields) -> ParseResult:
    policy, warnings = parse_cilium.network_policy(ref, top)
    return ParseResult(policy, warnings)


def _route(ref: ObjectRef, top: Fields) -> ParseResult:
    meta = top.opt_map("metadata") or Fields(ref, {}, "metadata")
    generation = meta.opt_int("generation", 0) or 0
    return ParseResult(parse_gateway.route(ref, top, creation_timestamp(meta), generation))


def _reference_grant(ref: ObjectRef, top: Fields) -> ParseResult:
    return ParseResult(parse_gateway.reference_grant(ref, top))


def _kube_network_policy(ref: ObjectRef, top: Fields) -> ParseResult:
    return ParseResult(parse_policy.kube_network_policy(ref, top))


def _namespace(ref: ObjectRef, top: Fields) -> ParseResult:
    return ParseResult(Namespace(ref, pairs(labels_of(top))))


_PARSERS: dict[Kind, Callable[[ObjectRef, Fields], ParseResult]] = {
    Kind.SERVICE: _service,
    Kind.ENDPOINT_SLICE: _endpoint_slice,
    Kind.DEPLOYMENT: _deployment,
    Kind.POD: _pod,
    Kind.ENVOY_CONFIG: _envoy_config,
    Kind.CLUSTERWIDE_ENVOY_CONFIG: _envoy_config,
    Kind.NETWORK_POLICY: _network_policy,
    Kind.CLUSTERWIDE_NETWORK_POLICY: _network_policy,
    Kind.HTTP_ROUTE: _route,
    Kind.GRPC_ROUTE: _route,
    Kind.REFERENCE_GRANT: _reference_grant,
    Kind.KUBE_NETWORK_POLICY: _kube_network_policy,
    Kind.NAMESPACE: _namespace,
}
