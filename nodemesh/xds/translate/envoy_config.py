"""Parsing and checking one CiliumEnvoyConfig's `spec.resources`.

Everything here depends on the CEC alone (not on the rest of the model), so
the model store can run it as an admission check (`validate_envoy_config`)
and the translator can memoize it per EnvoyConfig value.

Names are qualified per CEC (as Cilium does for plain names; here every
name is, so two CECs never collide): "<namespace>/<cec>/<name>", or
"<cec>/<name>" for a clusterwide config. References between the CEC's own
resources (RDS route names, cluster names in routes and TCP proxies, EDS
service names) are rewritten to the qualified names. Cluster names that are
not defined in the CEC must name a Service ("namespace/name[:port]"); they
stay as written here and are resolved against the model by the translator.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from nodemesh.model.objects import EnvoyConfig, EnvoyResource, ObjectError, ObjectWarning
from nodemesh.xds.translate import registry
from nodemesh.xds.translate.checks import check_http_filters, check_resource
from nodemesh.xds.translate.constraints import check_constraints
from nodemesh.xds.translate.envoy_rules import check_envoy_rules
from nodemesh.xds.translate.errors import ResourceError
from nodemesh.xds.translate.references import map_listener, map_route_clusters
from nodemesh.xds.translate.services import ServiceRef, parse_service_ref

log = structlog.get_logger(__name__)


def qualifier(config: EnvoyConfig) -> str:
    """The prefix of every resource name this CEC defines."""
    ref = config.ref
    return f"{ref.namespace}/{ref.name}/" if ref.namespace else f"{ref.name}/"


@dataclass(eq=False)
class ParsedConfig:
    """One CEC's resources, parsed, checked and qualified.

    `resources` maps type URL -> qualified name -> message; `fields` says where
    each came from ("spec.resources[2]"). Messages are shared through the
    translator's memo: copy before changing them.
    """

    config: EnvoyConfig
    resources: dict[str, dict[str, Message]] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)  # qualified name -> field
    service_refs: list[tuple[ServiceRef, str]] = field(default_factory=list)
    errors: list[ObjectError] = field(default_factory=list)
    warnings: list[ObjectWarning] = field(default_factory=list)

    def error(self, where: str, reason: str) -> None:
        self.errors.append(ObjectError(self.config.ref, where, reason))


def _parse_resource(resource: EnvoyResource) -> Message:
    """The protobuf message of one raw resource, or ResourceError naming the field."""
    cls = registry.message_class(resource.type_url, "@type")
    try:
        body = json.loads(resource.body)
    except json.JSONDecodeError as exc:
        raise ResourceError("", f"not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ResourceError("", f"must be a JSON object, not {type(body).__name__}")
    body.pop("@type", None)
    registry.ensure_embedded_types(body)
    try:
        return json_format.ParseDict(body, cls())
    except (json_format.ParseError, AttributeError, TypeError, ValueError) as exc:
        # The JSON parser raises more than ParseError on some malformed input.
        raise ResourceError("", f"does not parse as {cls.DESCRIPTOR.full_name}: {exc}") from exc


def _load(parsed: ParsedConfig) -> list[tuple[EnvoyResource, Message, str]]:
    """Parse every resource; returns (resource, message, short name) of the good ones."""
    loaded: list[tuple[EnvoyResource, Message, str]] = []
    seen: set[tuple[str, str]] = set()
    for resource in parsed.config.resources:
        try:
            message = _parse_resource(resource)
        except ResourceError as exc:
            where = f"{resource.field}.{exc.field}" if exc.field else resource.field
            parsed.error(where, exc.reason)
            continue
        name = registry.resource_name(message)
        name_field = "cluster_name" if resource.type_url == registry.ENDPOINT else "name"
        if not name:
            parsed.error(f"{resource.field}.{name_field}", "resource has no name")
            continue
        if (resource.type_url, name) in seen:
            parsed.error(
                f"{resource.field}.{name_field}", f"another resource of this type is named {name!r}"
            )
            continue
        seen.add((resource.type_url, name))
        try:
            _check(parsed, resource, message)
        except ResourceError as exc:
            parsed.error(f"{resource.field}.{exc.field}", exc.reason)
            continue
        loaded.append((resource, message, name))
    return loaded


def _check(parsed: ParsedConfig, resource: EnvoyResource, message: Message) -> None:
    findings = check_resource(message, resource.field)
    for where, reason in findings.warnings:
        parsed.warnings.append(ObjectWarning(parsed.config.ref, where, reason))
    for err in findings.errors:
        parsed.error(err.field, err.reason)
    if isinstance(message, listener_pb2.Listener):
        for err in check_http_filters(message, resource.field):
            parsed.error(err.field, err.reason)
    if findings.errors:
        return
    broken = list(check_constraints(message, resource.field))
    # Envoy's own checks only once the field rules hold (it runs them in
    # that order too), so one mistake gives one error.
    broken = broken or list(check_envoy_rules(message, resource.field))
    for where, reason in broken:
        parsed.error(where, reason)


def _local_names(loaded: list[tuple[EnvoyResource, Message, str]], type_url: str) -> set[str]:
    return {name for resource, _, name in loaded if resource.type_url == type_url}


def _cluster_mapper(
    parsed: ParsedConfig, prefix: str, clusters: set[str], base: str
) -> Callable[[str, str], str]:
    def resolve(name: str, where: str) -> str:
        if name in clusters:
            return prefix + name
        if name.startswith(prefix) and name[len(prefix) :] in clusters:
            return name  # already written in its qualified form
        service_ref = parse_service_ref(name)
        if service_ref is None:
            parsed.error(
                f"{base}.{where}",
                f"cluster {name!r} is neither defined in this config nor a Service "
                "reference (namespace/name or namespace/name:port)",
            )
            return name
        parsed.service_refs.append((service_ref, f"{base}.{where}"))
        return name

    return resolve


def _route_mapper(
    parsed: ParsedConfig, prefix: str, routes: set[str], base: str
) -> Callable[[str, str], str]:
    def resolve(name: str, where: str) -> str:
        if name in routes:
            return prefix + name
        if name.startswith(prefix) and name[len(prefix) :] in routes:
            return name  # already written in its qualified form
        parsed.error(
            f"{base}.{where}", f"route configuration {name!r} is not defined in this config"
        )
        return name

    return resolve


def _default_ads(source: config_source_pb2.ConfigSource) -> None:
    # As in Cilium: a reference without a config source is served over the same ADS stream.
    if source.WhichOneof("config_source_specifier") is None:
        source.ads.SetInParent()
        source.resource_api_version = config_source_pb2.V3


def _qualify_cluster(
    parsed: ParsedConfig, cluster: cluster_pb2.Cluster, base: str, assignments: set[str]
) -> None:
    """An EDS cluster gets its endpoints from the CEC's own ClusterLoadAssignment,
    or, as with Cilium's backendServices, from the Service it is named after
    ("default/echo" with custom settings): it then reads the Service's shared
    assignment."""
    if cluster.type != cluster_pb2.Cluster.EDS:
        return
    eds = cluster.eds_cluster_config
    _default_ads(eds.eds_config)
    wanted = eds.service_name or cluster.name
    if wanted in assignments:
        if eds.service_name:
            eds.service_name = qualifier(parsed.config) + eds.service_name
        return
    service_ref = parse_service_ref(wanted)
    if service_ref is not None:
        parsed.service_refs.append((service_ref, f"{base}.eds_cluster_config.service_name"))
        eds.service_name = wanted


def _qualify(parsed: ParsedConfig, loaded: list[tuple[EnvoyResource, Message, str]]) -> None:
    prefix = qualifier(parsed.config)
    clusters = _local_names(loaded, registry.CLUSTER)
    routes = _local_names(loaded, registry.ROUTE)
    assignments = _local_names(loaded, registry.ENDPOINT)
    for resource, message, name in loaded:
        cluster_ref = _cluster_mapper(parsed, prefix, clusters, resource.field)
        if isinstance(message, listener_pb2.Listener):
            route_ref = _route_mapper(parsed, prefix, routes, resource.field)
            map_listener(message, "", cluster_ref, route_ref)
            message.name = prefix + name
        elif isinstance(message, route_pb2.RouteConfiguration):
            map_route_clusters(message, "", cluster_ref)
            message.name = prefix + name
        elif isinstance(message, cluster_pb2.Cluster):
            _qualify_cluster(parsed, message, resource.field, assignments)
            message.name = prefix + name
        elif isinstance(message, endpoint_pb2.ClusterLoadAssignment):
            message.cluster_name = prefix + name
        qualified = prefix + name
        parsed.resources.setdefault(resource.type_url, {})[qualified] = message
        parsed.fields[qualified] = resource.field


def parse_config(config: EnvoyConfig) -> ParsedConfig:
    """Parse, check and qualify a CEC's resources. Never raises for bad input:
    problems are in `.errors`, each naming the field and the reason."""
    parsed = ParsedConfig(config)
    try:
        _qualify(parsed, _load(parsed))
    except Exception as exc:
        # A translator bug must cost this one CEC, never the whole translation:
        # it is rejected (its previous version stays) and the trace is logged.
        log.exception("envoy_config_internal_error", object=str(config.ref))
        parsed.error("spec.resources", f"internal error while translating: {exc!r}")
    return parsed


def validate_envoy_config(config: EnvoyConfig) -> list[ObjectError]:
    """The admission check for one CEC: everything wrong that can be seen
    without the rest of the model (whether referenced Services exist is the
    translator's check, reported in Translation.errors)."""
    return list(parse_config(config).errors)
