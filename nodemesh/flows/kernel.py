"""Kernel datapath events -> L3/L4 flows.

The datapath's event ring (`nm_events_v1`: bpf/lib/events.h,
nodemesh/ebpf/events.py) carries one fixed struct per event. This module
turns a decoded event into a flow, enriched from the model. It depends on
the event's shape only (`KernelEvent`, a Protocol that ebpf's DecodedEvent
satisfies), not on nodemesh.ebpf: both are layer 1, and the agent (layer
3+) joins them by passing the reader's events here.

Event types (enum nm_event_type): 1 policy verdict, 2 translation (VIP ->
backend), 3 L7 steering to the node Envoy, 4 zero-backend refusal, whose
`reason` (enum nm_event_reason) says why: 1 the Service has no backends, 2
the backend picked went away while the agent shrank the Service.
"""

from __future__ import annotations

import time
from typing import Protocol

from nodemesh._gen.nodemesh.v1 import flow_pb2
from nodemesh.flows.enrich import Resolver, Who

POLICY, TRANSLATION, L7_STEER, NO_BACKEND = 1, 2, 3, 4
_ALLOWED, _DENIED = 1, 2
_NO_BACKENDS, _BACKEND_GONE = 1, 2
_REFUSALS = {
    _NO_BACKENDS: (flow_pb2.NO_SERVICE, "the Service has no backends"),
    _BACKEND_GONE: (flow_pb2.BACKEND_REMOVED, "its backend went away as the Service shrank"),
}
_TCP, _UDP = 6, 17
_KINDS = {
    POLICY: flow_pb2.POLICY_VERDICT,
    TRANSLATION: flow_pb2.TRANSLATION,
    L7_STEER: flow_pb2.L7_STEERING,
    NO_BACKEND: flow_pb2.NO_BACKEND,
}


class KernelEvent(Protocol):
    """What a decoded nm_event offers (nodemesh.ebpf.events.DecodedEvent)."""

    @property
    def type(self) -> int: ...
    @property
    def timestamp_ns(self) -> int: ...
    @property
    def cgroup_id(self) -> int: ...
    @property
    def saddr(self) -> str: ...
    @property
    def sport(self) -> int: ...
    @property
    def daddr(self) -> str: ...
    @property
    def dport(self) -> int: ...
    @property
    def orig_daddr(self) -> str: ...
    @property
    def orig_dport(self) -> int: ...
    @property
    def proto(self) -> int: ...
    @property
    def verdict(self) -> int: ...
    @property
    def src_identity(self) -> int: ...
    @property
    def dst_identity(self) -> int: ...
    @property
    def reason(self) -> int: ...
    @property
    def key(self) -> bytes:
        """Equal for events that differ only in time, socket and source
        port; empty: do not cache."""
        ...


class UnknownEvent(ValueError):
    """An event type this agent does not know (a newer datapath): counted, skipped."""


def _wall_offset_ns() -> int:
    """bpf_ktime_get_ns() is CLOCK_MONOTONIC; flows carry wall-clock time."""
    return time.time_ns() - time.monotonic_ns()


def _fill(into: flow_pb2.Endpoint, who: Who, identity: int) -> None:
    into.identity = identity
    into.namespace = who.namespace
    into.pod_name = who.pod
    into.labels.extend(who.labels)
    if who.workload:
        into.workloads.add(name=who.workload, kind="Deployment")


def _verdict(event: KernelEvent) -> int:
    if event.type == POLICY:
        return int(flow_pb2.FORWARDED if event.verdict == _ALLOWED else flow_pb2.DROPPED)
    if event.type == NO_BACKEND:
        return int(flow_pb2.DROPPED)
    if event.type == L7_STEER:
        return int(flow_pb2.REDIRECTED)
    return int(flow_pb2.FORWARDED)


def _refusal(reason: int) -> tuple[int, str]:
    """The drop reason and its words; a reason from a newer datapath by number."""
    known = _REFUSALS.get(reason)
    return known if known is not None else (flow_pb2.NO_SERVICE, f"no backend (reason {reason})")


def _drop_reason(event: KernelEvent) -> int:
    if event.type == NO_BACKEND:
        return int(_refusal(event.reason)[0])
    if event.type == POLICY and event.verdict != _ALLOWED:
        return int(flow_pb2.POLICY_DENIED)
    return int(flow_pb2.DROP_REASON_UNKNOWN)


def kernel_flow(
    event: KernelEvent,
    resolver: Resolver,
    node_name: str,
    wall_offset_ns: int | None = None,
    client: Who | None = None,
) -> flow_pb2.Flow:
    """`client`: the source pod when the caller knows it better than the
    event's address does (at connect() there is no source address yet)."""
    kind = _KINDS.get(event.type)
    if kind is None:
        raise UnknownEvent(f"kernel event type {event.type}")
    offset = _wall_offset_ns() if wall_offset_ns is None else wall_offset_ns
    flow = flow_pb2.Flow(Type=flow_pb2.L3_L4, node_name=node_name, kernel_event=kind)
    flow.verdict = _verdict(event)
    flow.drop_reason_desc = _drop_reason(event)
    flow.time.FromNanoseconds(event.timestamp_ns + offset)
    flow.IP.source, flow.IP.destination = event.saddr, event.daddr
    flow.IP.ipv6 = ":" in event.daddr
    ports = flow.l4.UDP if event.proto == _UDP else flow.l4.TCP
    ports.source_port, ports.destination_port = event.sport, event.dport
    source = client if client is not None else resolver.source(event.saddr)
    destination = resolver.backend(event.daddr, event.dport)
    _fill(flow.source, source, event.src_identity)
    _fill(flow.destination, destination, event.dst_identity)
    service = resolver.service_at(event.orig_daddr, event.orig_dport) or destination.service
    if service is not None:
        flow.destination_service.namespace = service.namespace
        flow.destination_service.name = service.name
    flow.summary = _summary(event, flow)
    return flow


def _summary(event: KernelEvent, flow: flow_pb2.Flow) -> str:
    proto = "UDP" if event.proto == _UDP else "TCP"
    vip = f"{event.orig_daddr}:{event.orig_dport}"
    backend = f"{event.daddr}:{event.dport}"
    service = flow.destination_service
    named = f" ({service.namespace}/{service.name})" if service.name else ""
    if event.type == TRANSLATION:
        return f"{proto} {vip} -> {backend}{named}"
    if event.type == L7_STEER:
        return f"{proto} {vip}{named} steered to the node Envoy at {backend}"
    if event.type == NO_BACKEND:
        why = _refusal(event.reason)[1]
        return f"{proto} {vip}{named} refused: {why}"
    allowed = "allowed" if event.verdict == _ALLOWED else "denied"
    return f"{proto} {backend} policy {allowed} (identity {event.src_identity} -> " + (
        f"{event.dst_identity})"
    )
