"""Client Status Discovery Service: what every connected client holds, per
resource, with its sync status and the client's own NACK message.

Served from the server's read-only status API; FetchClientStatus answers
once, StreamClientStatus answers each request on the stream.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, string_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from nodemesh.xds.server.status import ClientStatus, ResourceStatus, TypeStatus

ClientsView = Callable[[], list[ClientStatus]]


class CsdsService(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    """envoy.service.status.v3.ClientStatusDiscoveryService over `clients()`."""

    def __init__(self, clients: ClientsView) -> None:
        self._clients = clients

    async def FetchClientStatus(
        self, request: csds_pb2.ClientStatusRequest, context: Any
    ) -> csds_pb2.ClientStatusResponse:
        return client_status_response(self._clients(), request)

    async def StreamClientStatus(
        self, requests: AsyncIterator[csds_pb2.ClientStatusRequest], context: Any
    ) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        async for request in requests:
            yield client_status_response(self._clients(), request)


def client_status_response(
    clients: Iterable[ClientStatus], request: csds_pb2.ClientStatusRequest
) -> csds_pb2.ClientStatusResponse:
    """One ClientConfig per connected stream that `request` selects."""
    response = csds_pb2.ClientStatusResponse()
    for client in clients:
        if not _selected(client, request):
            continue
        config = response.config.add()
        if client.node is not None:
            config.node.CopyFrom(client.node)
        for types in client.types.values():
            _add_type(config, types, include_contents=not request.exclude_resource_contents)
    return response


def _selected(client: ClientStatus, request: csds_pb2.ClientStatusRequest) -> bool:
    if request.HasField("node") and request.node.id and request.node.id != client.node_id:
        return False
    if not request.node_matchers:
        return True
    return any(_node_matches(m, client.node_id) for m in request.node_matchers)


def _node_matches(matcher: node_pb2.NodeMatcher, node_id: str) -> bool:
    if not matcher.HasField("node_id"):
        return True
    return _string_matches(matcher.node_id, node_id)


def _string_matches(matcher: string_pb2.StringMatcher, value: str) -> bool:
    if matcher.ignore_case:
        value = value.lower()
    pattern = matcher.WhichOneof("match_pattern")
    if pattern == "safe_regex":
        return re.fullmatch(matcher.safe_regex.regex, value) is not None
    wanted = getattr(matcher, pattern) if pattern else ""
    wanted = wanted.lower() if matcher.ignore_case else wanted
    checks: dict[str | None, Callable[[], bool]] = {
        "exact": lambda: value == wanted,
        "prefix": lambda: value.startswith(wanted),
        "suffix": lambda: value.endswith(wanted),
        "contains": lambda: wanted in value,
    }
    check = checks.get(pattern)
    return check() if check is not None else False


def _add_type(config: csds_pb2.ClientConfig, types: TypeStatus, include_contents: bool) -> None:
    for resource in types.resources:
        entry = config.generic_xds_configs.add()
        entry.type_url = types.type_url
        entry.name = resource.name
        entry.version_info = resource.version
        entry.config_status = csds_pb2.ConfigStatus.Value(resource.status.value)
        entry.client_status = dump_pb2.ClientResourceStatus.Value(resource.client_status.value)
        if types.last_ack_time is not None:
            entry.last_updated.CopyFrom(_timestamp(types.last_ack_time))
        if include_contents and resource.resource is not None:
            entry.xds_config.CopyFrom(resource.resource.to_any())
        _add_error(entry, types, resource)


def _add_error(
    entry: csds_pb2.ClientConfig.GenericXdsConfig, types: TypeStatus, resource: ResourceStatus
) -> None:
    if resource.client_status.value != "NACKED" or types.last_nack_error is None:
        return
    entry.error_state.details = types.last_nack_error
    entry.error_state.version_info = types.last_nack_version or ""
    if types.last_nack_time is not None:
        entry.error_state.last_update_attempt.CopyFrom(_timestamp(types.last_nack_time))


def _timestamp(wall: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(wall * 1e9))
    return stamp
