"""Resource typing and the encode-once representation of one resource.

Every resource is serialized exactly once per content version. The bytes are
kept ready to be spliced into a DiscoveryResponse or DeltaDiscoveryResponse,
so that a push to a thousand streams concatenates shared bytes instead of
building and encoding a thousand protobuf messages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message

from nodemesh.xds.vocab import CLUSTER as CLUSTER
from nodemesh.xds.vocab import ENDPOINT as ENDPOINT
from nodemesh.xds.vocab import LISTENER as LISTENER
from nodemesh.xds.vocab import ROUTE as ROUTE
from nodemesh.xds.vocab import SCOPED_ROUTE, VIRTUAL_HOST
from nodemesh.xds.vocab import is_valid_type_url as is_valid_type_url
from nodemesh.xds.vocab import short_name as short_name

# Make-before-break on one ADS stream (xDS protocol, "eventual consistency
# considerations"): clusters before the endpoints that fill them, listeners
# before the routes they name. Types not listed here go last, by name.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE, VIRTUAL_HOST)

# Types whose SotW responses carry the full state (absence = deletion) and
# which a client may subscribe to as a wildcard.
WILDCARD_TYPES: frozenset[str] = frozenset({CLUSTER, LISTENER, SCOPED_ROUTE})


def push_rank(type_url: str) -> tuple[int, str]:
    """Sort key that puts types in make-before-break order."""
    try:
        return (PUSH_ORDER.index(type_url), "")
    except ValueError:
        return (len(PUSH_ORDER), type_url)


def content_hash(parts: Iterable[bytes]) -> str:
    """Short stable hash: identical content gives identical versions in every
    process and every replica (no counters, no timestamps)."""
    digest = hashlib.blake2b(digest_size=10)
    for part in parts:
        digest.update(len(part).to_bytes(4, "little"))
        digest.update(part)
    return digest.hexdigest()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """Wire encoding of one length-delimited protobuf field (wire type 2)."""
    return _varint((field_number << 3) | 2) + _varint(len(payload)) + payload


# Field numbers used when splicing pre-encoded resources into responses
# (envoy/service/discovery/v3/discovery.proto).
SOTW_RESOURCES_FIELD = 2  # DiscoveryResponse.resources (repeated Any)
DELTA_RESOURCES_FIELD = 2  # DeltaDiscoveryResponse.resources (repeated Resource)
_RESOURCE_VERSION = 1  # Resource.version
_RESOURCE_ANY = 2  # Resource.resource
_RESOURCE_NAME = 3  # Resource.name


class EncodedResource:
    """One resource at one content version, serialized once.

    Instances are immutable by contract and shared by every snapshot that
    contains the same content and every stream that sends it.
    """

    __slots__ = (
        "_delta_field",
        "any_bytes",
        "message",
        "name",
        "references",
        "sotw_field",
        "type_url",
        "version",
    )

    def __init__(self, type_url: str, name: str, message: Message) -> None:
        payload = message.SerializeToString(deterministic=True)
        self.type_url = type_url
        self.name = name
        self.message = message
        self.version = content_hash((name.encode(), payload))
        any_proto = AnyProto(type_url=type_url, value=payload)
        self.any_bytes: bytes = any_proto.SerializeToString(deterministic=True)
        # DiscoveryResponse.resources entry: ready to concatenate.
        self.sotw_field: bytes = length_delimited(SOTW_RESOURCES_FIELD, self.any_bytes)
        self._delta_field: bytes | None = None
        # Names of resources this one refers to (a listener's RDS names, an
        # EDS cluster's endpoints), filled in by the snapshot's consistency
        # check on first use.
        self.references: tuple[str, ...] | None = None

    @property
    def delta_field(self) -> bytes:
        """DeltaDiscoveryResponse.resources entry, built on first use only
        (SotW-only deployments never pay for it)."""
        if self._delta_field is None:
            resource = (
                length_delimited(_RESOURCE_VERSION, self.version.encode())
                + length_delimited(_RESOURCE_ANY, self.any_bytes)
                + length_delimited(_RESOURCE_NAME, self.name.encode())
            )
            self._delta_field = length_delimited(DELTA_RESOURCES_FIELD, resource)
        return self._delta_field

    def to_any(self) -> AnyProto:
        """A fresh Any holding the shared bytes (for CSDS and config dumps)."""
        return AnyProto.FromString(self.any_bytes)

    def __repr__(self) -> str:
        return f"EncodedResource({short_name(self.type_url)} {self.name!r} v={self.version})"
