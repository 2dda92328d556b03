"""The node's flow collector: access-log entries (and later kernel events) in,
enriched flows into the ring, the metrics and the followers.

`FlowCollector` is the one place flows enter. It resolves addresses through
the model the agent currently serves (`model` is a callable, so the collector
follows model versions without importing whoever holds them), applies the
configured sampling, and counts everything it could not use.

Sampling (`sample_every`): on nodes with very many requests, keep one flow in
N. Flows dropped this way are counted (`sampled_out`), not lost: the metrics
still count every flow, so rates stay exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.message import DecodeError

from nodemesh._gen.nodemesh.v1 import flow_pb2
from nodemesh.flows.enrich import Resolver, Who
from nodemesh.flows.kernel import KernelEvent, UnknownEvent, kernel_flow
from nodemesh.flows.l7 import http_flow
from nodemesh.flows.metrics import LOST, FlowMetrics
from nodemesh.flows.ring import FlowRing
from nodemesh.model.snapshot import MeshModel

log = structlog.get_logger(__name__)

_UNSPECIFIED = ("0.0.0.0", "::")
_MAX_TEMPLATES = 4096


@dataclass(frozen=True, slots=True)
class CollectorOptions:
    """`ring_capacity`: flows held (Hubble's default 4,096); `sample_every`:
    keep one flow in N in the ring (1: all); `follower_queue`: flows a slow
    follower may lag before it loses some."""

    node_name: str = ""
    ring_capacity: int = 4096
    sample_every: int = 1
    follower_queue: int = 1024


class FlowCollector:
    def __init__(self, options: CollectorOptions, model: Callable[[], MeshModel | None]) -> None:
        if options.sample_every < 1:
            raise ValueError(f"sample_every must be at least 1, got {options.sample_every}")
        self.options = options
        self.ring = FlowRing(options.ring_capacity, options.follower_queue)
        self.metrics = FlowMetrics()
        self._model = model
        self._resolver: Resolver | None = None
        self._tick = 0
        self.sampled_out = 0
        self.malformed_access_logs = 0
        self.lost_kernel_events = 0
        self.access_log_entries = 0
        self.unknown_kernel_events = 0
        self._wall_offset = time.time_ns() - time.monotonic_ns()
        # Cgroup id -> pod "namespace/name" on this node (the agent's, from
        # the datapath): who made a kernel event that has no source address.
        self.cgroup_pods: Callable[[int], str | None] | None = None
        # Event key -> (a flow made for it, the source port's field, its
        # flows counter, its source port): events
        # that differ only in time, socket and source port (every connect of
        # one pod to one backend) copy it instead of resolving again.
        # Per resolver (model version); bounded.
        self._templates: dict[bytes, tuple[flow_pb2.Flow, Any, Any, int]] = {}

    def _client(self, event: KernelEvent, resolver: Resolver) -> Who | None:
        if self.cgroup_pods is None or event.saddr not in _UNSPECIFIED:
            return None
        pod = self.cgroup_pods(event.cgroup_id)
        return resolver.pod(pod, event.saddr) if pod is not None else None

    def resolver(self) -> Resolver:
        model = self._model()
        if model is None:
            model = MeshModel(version="", generation=0)
        if self._resolver is None or self._resolver.version != model.version:
            self._resolver = Resolver(model)
            self._templates.clear()
        return self._resolver

    def add(self, flow: flow_pb2.Flow) -> None:
        self.metrics.observe(flow)
        self._keep(flow)

    def _keep(self, flow: flow_pb2.Flow) -> None:
        """Into the ring, unless sampled out (the metrics counted it already)."""
        self._tick += 1
        if self._tick % self.options.sample_every:
            self.sampled_out += 1
            return
        self.ring.add(flow)

    def kernel_event(self, event: KernelEvent) -> None:
        """One decoded datapath event (the agent's ring reader calls this)."""
        resolver = self.resolver()
        cached = self._templates.get(event.key) if event.key else None
        if cached is not None:
            template = cached[0]
            flow = flow_pb2.Flow()
            flow.CopyFrom(template)
            when = flow.time
            when.seconds, when.nanos = divmod(event.timestamp_ns + self._wall_offset, 1_000_000_000)
            if event.sport != cached[3]:  # 0 at connect(), as in the template
                getattr(flow.l4, cached[1]).source_port = event.sport
            cached[2].inc()
            self._keep(flow)
            return
        try:
            client = self._client(event, resolver)
            flow = kernel_flow(event, resolver, self.options.node_name, self._wall_offset, client)
        except UnknownEvent as exc:
            self.unknown_kernel_events += 1
            log.warning("unknown_kernel_event", error=str(exc))
            return
        # A client the cgroup index may learn later (a new container) is not
        # remembered unresolved.
        unresolved = self.cgroup_pods is not None and event.saddr in _UNSPECIFIED and not client
        if event.key and not unresolved:
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()
            oneof = flow.l4.WhichOneof("protocol")
            counter = self.metrics.flows_counter(flow)
            self._templates[event.key] = (flow, oneof, counter, event.sport)
        self.add(flow)

    def lost_kernel(self, count: int) -> None:
        """The kernel ring overflowed by `count` events (reported by the reader)."""
        self.lost_kernel_events += count
        LOST.labels(source="kernel_ring").inc(count)

    def access_log_message(self, raw: bytes) -> None:
        """One StreamAccessLogsMessage off the wire. Malformed messages and
        entries are counted and skipped; the stream and the agent carry on."""
        message = als_pb2.StreamAccessLogsMessage()
        try:
            message.ParseFromString(raw)
        except DecodeError:
            self._malformed("undecodable StreamAccessLogsMessage", len(raw))
            return
        resolver = self.resolver()
        for entry in message.http_logs.log_entry:
            self.access_log_entries += 1
            if not entry.HasField("request") or not entry.HasField("common_properties"):
                self._malformed("HTTP entry without request or common properties", 0)
                continue
            try:
                flow = http_flow(entry, resolver, self.options.node_name)
            except (ValueError, TypeError) as exc:  # out-of-range values, bad addresses
                self._malformed(f"HTTP entry: {exc}", entry.ByteSize())
                continue
            self.add(flow)

    def _malformed(self, reason: str, size: int) -> None:
        self.malformed_access_logs += 1
        LOST.labels(source="malformed_access_log").inc()
        log.warning("malformed_access_log", reason=reason, bytes=size)
