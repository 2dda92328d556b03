"""One accepted CEC's contribution to a translation, resolved against the model.

parse_config (envoy_config.py) depends on the CEC alone; here the Service
references it left as written ("default/httpbin-v1") are checked against the
model and rewritten to the shared service cluster names. A reference to a
Service that does not exist, or an ambiguous port, rejects the CEC.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from nodemesh.model.objects import ObjectError, Service, ServiceName
from nodemesh.xds.translate import registry
from nodemesh.xds.translate.envoy_config import ParsedConfig
from nodemesh.xds.translate.errors import ResourceError
from nodemesh.xds.translate.references import keep, map_listener, map_route_clusters
from nodemesh.xds.translate.result import ConfigOutput, ServiceCluster
from nodemesh.xds.translate.services import cluster_name, resolve_port


def _resolve(
    parsed: ParsedConfig, services: Mapping[ServiceName, Service]
) -> tuple[dict[str, ServiceCluster], list[ObjectError]]:
    resolved: dict[str, ServiceCluster] = {}
    errors: list[ObjectError] = []
    for ref, where in parsed.service_refs:
        service = services.get(ref.service)
        if service is None:
            errors.append(
                ObjectError(
                    parsed.config.ref,
                    where,
                    f"cluster {ref.raw!r} refers to Service {ref.service}, which does not exist",
                )
            )
            continue
        try:
            port = resolve_port(service, ref.port)
        except ResourceError as exc:
            errors.append(ObjectError(parsed.config.ref, where, exc.reason))
            continue
        name = cluster_name(service, port)
        resolved[ref.raw] = ServiceCluster(name, ref.service, port)
    return resolved, errors


def _rewritten(message: Message, renames: Mapping[str, str]) -> Message:
    """A copy of `message` with service references renamed (the parsed one is shared)."""

    def rename(name: str, field: str) -> str:
        return renames.get(name, name)

    copy = type(message)()
    copy.CopyFrom(message)
    if isinstance(copy, listener_pb2.Listener):
        map_listener(copy, "", rename, keep)
    elif isinstance(copy, route_pb2.RouteConfiguration):
        map_route_clusters(copy, "", rename)
    return copy


def config_output(
    parsed: ParsedConfig, services: Mapping[ServiceName, Service]
) -> tuple[ConfigOutput | None, list[ObjectError]]:
    """The CEC's resources with service clusters resolved, or its errors."""
    if parsed.errors:
        return None, list(parsed.errors)
    resolved, errors = _resolve(parsed, services)
    if errors:
        return None, errors
    renames = {raw: cluster.name for raw, cluster in resolved.items() if raw != cluster.name}
    resources: dict[str, dict[str, Message]] = {}
    for type_url, named in parsed.resources.items():
        resources[type_url] = {
            name: _rewritten(message, renames)
            if renames and type_url in (registry.LISTENER, registry.ROUTE)
            else message
            for name, message in named.items()
        }
    clusters = tuple(sorted(set(resolved.values()), key=lambda c: c.name))
    output = ConfigOutput(resources, dict(parsed.fields), clusters, tuple(parsed.warnings))
    return output, []
