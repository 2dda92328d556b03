"""One Envoy HTTP access-log entry -> one L7 flow.

Source: the downstream remote address (the client as the node Envoy saw it;
the datapath keeps the pod's own address). Destination: the upstream address
Envoy connected to, resolved to its pod and Service, else the Service the
upstream cluster names. The route and cluster Envoy chose are kept, so a
canary's v1/v2 decision is visible per request.
"""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2

from nodemesh._gen.nodemesh.v1 import flow_pb2
from nodemesh.flows.enrich import Resolver, Who

_PROTOCOLS = {1: "HTTP/1.0", 2: "HTTP/1.1", 3: "HTTP/2", 4: "HTTP/3"}


def _socket(address: address_pb2.Address) -> tuple[str, int]:
    if address.HasField("socket_address"):
        return str(address.socket_address.address), int(address.socket_address.port_value)
    return "", 0


def _verdict(entry: accesslog_pb2.HTTPAccessLogEntry) -> int:
    """DROPPED when a policy (RBAC) answered, ERROR when Envoy could not reach
    a backend, FORWARDED otherwise (whatever the backend answered)."""
    details = entry.response.response_code_details
    if details.startswith("rbac_access_denied"):
        return int(flow_pb2.DROPPED)
    flags = entry.common_properties.response_flags
    if (
        flags.no_healthy_upstream
        or flags.upstream_connection_failure
        or flags.no_route_found
        or flags.no_cluster_found
        or not entry.response.response_code.value
    ):
        return int(flow_pb2.ERROR)
    return int(flow_pb2.FORWARDED)


def _flags(flags: accesslog_pb2.ResponseFlags) -> str:
    short = {
        "no_healthy_upstream": "UH",
        "upstream_connection_failure": "UF",
        "no_route_found": "NR",
        "no_cluster_found": "NC",
        "upstream_request_timeout": "UT",
        "local_reset": "LR",
        "upstream_remote_reset": "UR",
        "downstream_connection_termination": "DC",
        "rate_limited": "RL",
    }
    return ",".join(code for name, code in short.items() if getattr(flags, name))


_ENDPOINTS: dict[Who, flow_pb2.Endpoint] = {}
_ENDPOINTS_MAX = 4096  # a cache, not a store: cleared when full
_METHODS = {v: k for k, v in base_pb2.RequestMethod.items() if v}


def _endpoint(into: flow_pb2.Endpoint, who: Who) -> None:
    """Fill `into` from a prebuilt copy: one CopyFrom costs less than setting
    four fields through the protobuf runtime, and most flows repeat a few Whos."""
    built = _ENDPOINTS.get(who)
    if built is None:
        built = flow_pb2.Endpoint(namespace=who.namespace, pod_name=who.pod, labels=who.labels)
        if who.workload:
            built.workloads.add(name=who.workload, kind="Deployment")
        if len(_ENDPOINTS) >= _ENDPOINTS_MAX:
            _ENDPOINTS.clear()
        _ENDPOINTS[who] = built
    into.CopyFrom(built)


def http_flow(
    entry: accesslog_pb2.HTTPAccessLogEntry, resolver: Resolver, node_name: str
) -> flow_pb2.Flow:
    common = entry.common_properties
    src_ip, src_port = _socket(common.downstream_remote_address)
    dst_ip, dst_port = _socket(common.upstream_remote_address)
    source = resolver.source(src_ip)
    destination = resolver.backend(dst_ip, dst_port, common.upstream_cluster)
    flow = flow_pb2.Flow(Type=flow_pb2.L7, node_name=node_name, verdict=_verdict(entry))
    flow.time.CopyFrom(common.start_time)
    flow.IP.source, flow.IP.destination = src_ip, dst_ip
    flow.IP.ipv6 = ":" in src_ip
    flow.l4.TCP.source_port, flow.l4.TCP.destination_port = src_port, dst_port
    _endpoint(flow.source, source)
    _endpoint(flow.destination, destination)
    if destination.service is not None:
        flow.destination_service.namespace = destination.service.namespace
        flow.destination_service.name = destination.service.name
    l7 = flow.l7
    l7.type = flow_pb2.RESPONSE
    # Envoy's time from the first request byte to the last response byte sent.
    last = common.time_to_last_downstream_tx_byte
    l7.latency_ns = last.seconds * 1_000_000_000 + last.nanos
    cluster = common.upstream_cluster
    l7.route_name = common.route_name
    l7.upstream_cluster = cluster
    l7.backend_address = f"{dst_ip}:{dst_port}" if dst_ip else ""
    flags = _flags(common.response_flags) if common.HasField("response_flags") else ""
    l7.response_flags = flags
    http = l7.http
    http.code = code = entry.response.response_code.value
    http.method = method = _METHODS.get(entry.request.request_method, "")
    http.url = path = entry.request.path
    http.protocol = protocol = _PROTOCOLS.get(entry.protocol_version, "")
    flow.summary = summary(protocol, code, l7.latency_ns, method, path, cluster, flags)
    return flow


def summary(
    protocol: str, code: int, latency_ns: int, method: str, path: str, cluster: str, flags: str
) -> str:
    """Hubble's L7 summary shape: "HTTP/1.1 200 3ms (GET /headers)", plus the
    cluster Envoy chose and Envoy's response flags."""
    text = f"{protocol or 'HTTP'} {code} {latency_ns // 1_000_000}ms ({method} {path})"
    if cluster:
        text += f" -> {cluster}"
    if flags:
        text += f" [{flags}]"
    return text
