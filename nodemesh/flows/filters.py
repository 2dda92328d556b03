"""GetFlows filters, with Hubble's semantics.

A flow passes a request when it matches any allow (whitelist) filter, or
there is none, and matches no deny (blacklist) filter. Within one FlowFilter
every field that is set must match; within one field any value may.

Values are checked before any flow is read (`check`): a bad value is a
FilterError naming the field, which the CLI reports against its flag.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from nodemesh._gen.nodemesh.v1 import flow_pb2, observer_pb2

_STATUS = re.compile(r"^[1-5](\d\d|\+)$")  # "404" or a class "5+", as Hubble's


class FilterError(ValueError):
    """A filter value that cannot match anything sensible: `field` and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def check(filters: Sequence[observer_pb2.FlowFilter]) -> None:
    for flow_filter in filters:
        for code in flow_filter.http_status_code:
            if not _STATUS.match(code):
                raise FilterError(
                    "http_status_code", f"{code!r} is not a status (404) or a class (5+)"
                )
        for name in ("source_port", "destination_port"):
            for port in getattr(flow_filter, name):
                if not port.isdigit() or not 0 < int(port) < 65536:
                    raise FilterError(name, f"{port!r} is not a port (1-65535)")
        for name in ("source_pod", "destination_pod", "source_service", "destination_service"):
            for value in getattr(flow_filter, name):
                if not value or value.count("/") > 1:
                    raise FilterError(name, f"{value!r} is not NAME, NAMESPACE/NAME or NAMESPACE/")


def _name_matches(patterns: Sequence[str], namespace: str, name: str) -> bool:
    """ "ns/name" exactly, "ns/" any name in ns, "name" that name in any namespace."""
    for pattern in patterns:
        ns, slash, rest = pattern.partition("/")
        if not slash:
            if name == pattern:
                return True
        elif ns == namespace and (not rest or rest == name):
            return True
    return False


def _status_matches(patterns: Sequence[str], flow: flow_pb2.Flow) -> bool:
    if flow.Type != flow_pb2.L7 or not flow.l7.http.code:
        return False
    code = str(flow.l7.http.code)
    return any(code == p or (p.endswith("+") and code[0] == p[0]) for p in patterns)


def _ports(flow: flow_pb2.Flow) -> tuple[int, int]:
    l4 = flow.l4
    which = l4.WhichOneof("protocol")
    if which is None:
        return 0, 0
    ports = getattr(l4, which)
    return int(ports.source_port), int(ports.destination_port)


def _side(flow_filter: observer_pb2.FlowFilter, flow: flow_pb2.Flow, side: str) -> bool:
    endpoint: flow_pb2.Endpoint = getattr(flow, side)
    pods = getattr(flow_filter, f"{side}_pod")
    if pods and not (
        endpoint.pod_name and _name_matches(pods, endpoint.namespace, endpoint.pod_name)
    ):
        return False
    namespaces = getattr(flow_filter, f"{side}_namespace")
    if namespaces and endpoint.namespace not in namespaces:
        return False
    workloads = getattr(flow_filter, f"{side}_workload")
    if workloads and not any(w.name in workloads for w in endpoint.workloads):
        return False
    services = getattr(flow_filter, f"{side}_service")
    service: flow_pb2.Service = getattr(flow, f"{side}_service")
    if services and not (service.name and _name_matches(services, service.namespace, service.name)):
        return False
    ips = getattr(flow_filter, f"{side}_ip")
    address = flow.IP.source if side == "source" else flow.IP.destination
    return not (ips and address not in ips)


def matches(flow_filter: observer_pb2.FlowFilter, flow: flow_pb2.Flow) -> bool:
    if not (_side(flow_filter, flow, "source") and _side(flow_filter, flow, "destination")):
        return False
    if flow_filter.verdict and flow.verdict not in flow_filter.verdict:
        return False
    if flow_filter.type and flow.Type not in flow_filter.type:
        return False
    if flow_filter.http_status_code and not _status_matches(flow_filter.http_status_code, flow):
        return False
    source_port, destination_port = _ports(flow)
    if flow_filter.source_port and str(source_port) not in flow_filter.source_port:
        return False
    return not (
        flow_filter.destination_port and str(destination_port) not in flow_filter.destination_port
    )


def predicate(
    allow: Sequence[observer_pb2.FlowFilter], deny: Sequence[observer_pb2.FlowFilter]
) -> Callable[[flow_pb2.Flow], bool]:
    allow, deny = list(allow), list(deny)

    def passes(flow: flow_pb2.Flow) -> bool:
        if allow and not any(matches(f, flow) for f in allow):
            return False
        return not any(matches(f, flow) for f in deny)

    return passes
