"""Flows as text: `hubble observe`'s table, compact and JSON shapes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

from google.protobuf import json_format

from nodemesh._gen.nodemesh.v1 import flow_pb2, observer_pb2

TABLE_COLUMNS = ("TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY")
_KERNEL_TYPES = {
    flow_pb2.TRANSLATION: "translated",
    flow_pb2.L7_STEERING: "to-proxy",
    flow_pb2.NO_BACKEND: "no-backend",
    flow_pb2.POLICY_VERDICT: "policy-verdict",
}


def timestamp(flow: flow_pb2.Flow) -> str:
    when = datetime.fromtimestamp(flow.time.seconds + flow.time.nanos / 1e9, tz=UTC)
    return when.strftime("%b %e %H:%M:%S.") + f"{flow.time.nanos // 1_000_000:03d}"


def endpoint_name(endpoint: flow_pb2.Endpoint, address: str) -> str:
    """ns/pod, else ns/workload, else the address with its reserved identity."""
    if endpoint.pod_name:
        return f"{endpoint.namespace}/{endpoint.pod_name}"
    if endpoint.workloads:
        return f"{endpoint.namespace}/{endpoint.workloads[0].name}"
    labels = endpoint.labels
    reserved = [label.partition(":")[2] for label in labels if label.startswith("reserved:")]
    if reserved:
        return f"{address} ({reserved[0]})"
    if endpoint.identity and address in ("", "0.0.0.0", "::"):
        return f"identity {endpoint.identity}"
    return address or "?"


def _port(flow: flow_pb2.Flow, side: str) -> int:
    which = flow.l4.WhichOneof("protocol")
    if which is None:
        return 0
    return int(getattr(getattr(flow.l4, which), f"{side}_port"))


def source(flow: flow_pb2.Flow) -> str:
    return endpoint_name(flow.source, flow.IP.source)


def destination(flow: flow_pb2.Flow) -> str:
    name = endpoint_name(flow.destination, flow.IP.destination)
    port = _port(flow, "destination")
    return f"{name}:{port}" if port and "(" not in name else name


def flow_type(flow: flow_pb2.Flow) -> str:
    if flow.Type == flow_pb2.L7:
        return "http-response"
    return _KERNEL_TYPES.get(flow.kernel_event, "L3/L4")


def verdict(flow: flow_pb2.Flow) -> str:
    return str(flow_pb2.Verdict.Name(flow.verdict))


def row(flow: flow_pb2.Flow) -> tuple[str, ...]:
    return (
        timestamp(flow),
        source(flow),
        destination(flow),
        flow_type(flow),
        verdict(flow),
        flow.summary,
    )


def table(flows: Iterable[flow_pb2.Flow]) -> str:
    rows = [TABLE_COLUMNS, *(row(f) for f in flows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_COLUMNS) - 1)]
    return "\n".join(
        "   ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip()
        for r in rows
    )


def compact(flow: flow_pb2.Flow) -> str:
    return (
        f"{timestamp(flow)}: {source(flow)} -> {destination(flow)} "
        f"{flow_type(flow)} {verdict(flow)} ({flow.summary})"
    )


def lost(event: flow_pb2.LostEvent) -> str:
    where = flow_pb2.LostEvent.Source.Name(event.source)
    return f"EVENTS LOST: {event.num_events_lost} events lost ({where})"


def as_json(response: observer_pb2.GetFlowsResponse) -> str:
    data = json_format.MessageToDict(response, preserving_proto_field_name=True)
    return json.dumps(data, separators=(",", ":"), sort_keys=True)
