"""Read-only views of connected clients, for operators (`nodemesh status`,
/debug/syncz) and CSDS. Every object here is a frozen copy: holding one
never blocks or changes a stream.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from envoy.config.core.v3 import base_pb2

from nodemesh.xds.cache import EncodedResource, Snapshot, short_name
from nodemesh.xds.server.state import TypeState


class ConfigStatus(enum.Enum):
    """Per-resource sync state, as CSDS names it (envoy.service.status.v3.ConfigStatus)."""

    SYNCED = "SYNCED"  # the client ACKed the version the server holds now
    NOT_SENT = "NOT_SENT"  # the server holds it (or it was asked for) but never sent it
    STALE = "STALE"  # sent and not ACKed yet, or the server has a newer version
    ERROR = "ERROR"  # the client NACKed the version it was sent


class ClientResourceStatus(enum.Enum):
    """The client's side, as CSDS names it (envoy.admin.v3.ClientResourceStatus)."""

    REQUESTED = "REQUESTED"
    DOES_NOT_EXIST = "DOES_NOT_EXIST"
    ACKED = "ACKED"
    NACKED = "NACKED"


@dataclass(frozen=True, slots=True)
class ResourceStatus:
    name: str
    version: str  # the version the client holds (ACKed), else the one sent
    status: ConfigStatus
    client_status: ClientResourceStatus
    resource: EncodedResource | None  # the server's current resource, if any
    sent_version: str = ""  # the version last sent to the client ("" if none)


@dataclass(frozen=True, slots=True)
class TypeStatus:
    type_url: str
    short_name: str
    wildcard: bool
    subscribed: tuple[str, ...]
    last_sent_version: str
    last_sent_nonce: str
    last_acked_version: str
    pending: bool  # a response awaits its ACK/NACK
    last_ack_time: float | None  # wall clock
    last_nack_error: str | None
    last_nack_time: float | None
    last_nack_version: str | None
    resources: tuple[ResourceStatus, ...]

    @property
    def resource_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.resources)

    @property
    def status(self) -> ConfigStatus:
        """The worst status of any resource of this type (SYNCED if none)."""
        order = (ConfigStatus.ERROR, ConfigStatus.STALE, ConfigStatus.NOT_SENT)
        present = {r.status for r in self.resources}
        if self.pending:
            present.add(ConfigStatus.STALE)
        return next((s for s in order if s in present), ConfigStatus.SYNCED)


@dataclass(frozen=True, slots=True)
class ClientStatus:
    stream_id: int
    api: str  # "sotw" or "delta"
    node_id: str
    cluster: str
    node_key: str
    peer: str
    connected_at: float  # wall clock
    snapshot_label: str | None  # model version the server holds for this node
    node: base_pb2.Node | None
    types: Mapping[str, TypeStatus]


def type_status(state: TypeState, snapshot: Snapshot | None) -> TypeStatus:
    """Frozen view of one type of one stream against the current snapshot."""
    resources: Mapping[str, EncodedResource] = {}
    if snapshot is not None:
        resources = snapshot.get(state.type_url)
        if state.wildcard:
            # What this stream is to hold: the wildcard view leaves out names
            # served by name only (proxyless targets) unless it also names
            # them. A resource of the type that it holds but is not entitled
            # to is on its way out (a held removal), not SYNCED.
            resources = snapshot.wildcard_and(state.type_url, state.names)
    names = set(state.sent) | set(state.names)
    if state.wildcard:
        names |= resources.keys()
    nack = state.nack
    return TypeStatus(
        type_url=state.type_url,
        short_name=short_name(state.type_url),
        wildcard=state.wildcard,
        subscribed=tuple(sorted(state.names)),
        last_sent_version=state.sent_version,
        last_sent_nonce=state.nonce,
        last_acked_version=state.acked_version,
        pending=bool(state.inflight),
        last_ack_time=state.last_ack_at,
        last_nack_error=nack.message if nack else None,
        last_nack_time=nack.at if nack else None,
        last_nack_version=nack.version_info if nack else None,
        resources=tuple(_resource_status(state, n, resources.get(n)) for n in sorted(names)),
    )


def _resource_status(
    state: TypeState, name: str, current: EncodedResource | None
) -> ResourceStatus:
    acked = state.acked.get(name)
    sent = state.sent.get(name)
    client = ClientResourceStatus.ACKED if acked is not None else ClientResourceStatus.REQUESTED
    if state.rejected(name):
        status, client = ConfigStatus.ERROR, ClientResourceStatus.NACKED
    elif current is None:
        # Asked for but absent; or still held by the client (held removal).
        status = ConfigStatus.STALE if sent is not None else ConfigStatus.NOT_SENT
        if sent is None:
            client = ClientResourceStatus.DOES_NOT_EXIST
    elif acked == current.version:
        status = ConfigStatus.SYNCED
    elif sent is None:
        status = ConfigStatus.NOT_SENT
    else:
        status = ConfigStatus.STALE
    return ResourceStatus(name, acked or sent or "", status, client, current, sent or "")


def frozen_types(types: dict[str, TypeStatus]) -> Mapping[str, TypeStatus]:
    return MappingProxyType(types)
