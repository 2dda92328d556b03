"""Bounds on what one client may make a stream keep: type URLs (count of
unknown ones, length), the node (id length, total size) and resource names.
Each check raises the `XdsServerError` that ends only the offending stream,
and never echoes an unbounded value back."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from envoy.config.core.v3 import base_pb2

from nodemesh.xds.server.errors import InvalidRequest, TooManyNames, TooManyTypes
from nodemesh.xds.vocab import SHORT_NAMES, is_valid_type_url

if TYPE_CHECKING:
    from nodemesh.xds.server.stream import StreamSettings


def check_type_url(request: Any, held: Collection[str], settings: StreamSettings) -> None:
    """`request.type_url` is well-formed, not too long, and not one unknown
    type too many for a stream that already asked for `held`."""
    type_url: str = request.type_url
    kind = type(request).__name__
    if len(type_url) > settings.max_type_url_length:
        raise InvalidRequest(
            f"{kind}.type_url is {len(type_url)} characters long, more than the limit "
            f"of {settings.max_type_url_length}"
        )
    if not is_valid_type_url(type_url):
        raise InvalidRequest(
            f"{kind}.type_url {type_url!r} is not a type.googleapis.com/<message> type URL"
        )
    if type_url in held or type_url in SHORT_NAMES:
        return
    others = sum(1 for t in held if t not in SHORT_NAMES)
    if others >= settings.max_other_types:
        raise TooManyTypes(
            f"{kind}.type_url {type_url!r}: the stream already asked for {others} type URLs "
            f"this server does not serve, the limit"
        )


def checked_node(request: Any, settings: StreamSettings) -> base_pb2.Node:
    """A copy of the first request's node, within bounds. A copy: a
    sub-message keeps its whole request alive (upb shares one arena), names
    by the hundred thousand included."""
    kind = type(request).__name__
    if not request.HasField("node") or not request.node.id:
        raise InvalidRequest(f"{kind}.node.id is required on the first request of a stream")
    node = base_pb2.Node()
    node.CopyFrom(request.node)
    if len(node.id) > settings.max_node_id_length:
        raise InvalidRequest(
            f"{kind}.node.id is {len(node.id)} characters long, more than the limit "
            f"of {settings.max_node_id_length}"
        )
    size = node.ByteSize()
    if size > settings.max_node_bytes:
        raise InvalidRequest(
            f"{kind}.node is {size} bytes, more than the limit of {settings.max_node_bytes}"
        )
    return node


def check_name_bound(names: Iterable[Collection[str]], settings: StreamSettings) -> None:
    total = sum(len(n) for n in names)
    if total > settings.max_names:
        raise TooManyNames(
            f"stream subscribes to {total} resource names, "
            f"more than the limit of {settings.max_names}"
        )
