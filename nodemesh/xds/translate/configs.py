"""One accepted CEC's contribution to a translation, resolved against the model.

parse_config (envoy_config.py) depends on the CEC alone; here the Service
references it left as written ("default/httpbin-v1") are checked against the
model and rewritten to the shared service cluster names. A reference to a
Service that does not exist, or an ambiguous port, rejects the CEC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from nodemesh.model.objects import (
    EnvoyConfig,
    ObjectError,
    ObjectRef,
    ObjectWarning,
    Service,
    ServiceName,
)
from nodemesh.model.snapshot import MeshModel
from nodemesh.xds.translate import registry
from nodemesh.xds.translate.envoy_config import ParsedConfig, parse_config
from nodemesh.xds.translate.errors import ResourceError
from nodemesh.xds.translate.references import keep, map_listener, map_route_clusters
from nodemesh.xds.translate.result import ConfigOutput, ServiceCluster, TranslateOptions
from nodemesh.xds.translate.services import SERVICE_REF, resolve_port, service_cluster


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
        resolved[ref.raw] = service_cluster(service, port)
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
    elif isinstance(copy, cluster_pb2.Cluster) and copy.HasField("eds_cluster_config"):
        eds = copy.eds_cluster_config
        if eds.service_name in renames:
            eds.service_name = renames[eds.service_name]
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
            if renames and type_url in (registry.LISTENER, registry.ROUTE, registry.CLUSTER)
            else message
            for name, message in named.items()
        }
    clusters = tuple(sorted(set(resolved.values()), key=lambda c: c.name))
    output = ConfigOutput(resources, dict(parsed.fields), clusters, tuple(parsed.warnings))
    return output, []


# --- the config stage: every CEC of the model, conflicts, last good ---------

log = structlog.get_logger(__name__)
_RESERVED_PREFIX = "nodemesh/"
# A CEC's memoized output: the parse it came from and the Services it resolved.
OutputMemo = dict[ObjectRef, tuple[ParsedConfig, tuple[Service | None, ...], ConfigOutput]]


def node_selects(config: EnvoyConfig, options: TranslateOptions) -> bool:
    """Whether a CEC applies to the node these options describe."""
    if config.node_selector is None or options.node_name is None:
        return True
    labels = dict(options.node_labels)
    labels.setdefault("kubernetes.io/hostname", options.node_name)
    return config.node_selector.matches(labels)


@dataclass(eq=False)
class ConfigStage:
    """What all CECs contribute in one round, and the memos it used."""

    resources: dict[str, dict[str, Message]] = field(
        default_factory=lambda: {url: {} for url in registry.RESOURCE_TYPES}
    )
    owner: dict[tuple[str, str], ObjectRef] = field(default_factory=dict)
    fields: dict[tuple[str, str], str] = field(default_factory=dict)  # where it was written
    elsewhere: set[ObjectRef] = field(default_factory=set)  # CECs for other nodes
    needed: dict[str, ServiceCluster] = field(default_factory=dict)
    errors: list[ObjectError] = field(default_factory=list)
    warnings: list[ObjectWarning] = field(default_factory=list)
    last_good: dict[ObjectRef, ConfigOutput] = field(default_factory=dict)
    parsed: dict[EnvoyConfig, ParsedConfig] = field(default_factory=dict)
    outputs: OutputMemo = field(default_factory=dict)

    def signature(self) -> tuple[tuple[str, int], ...]:
        """Identity of what the redirect stage reads (listeners and routes)."""
        return tuple(
            (name, id(message))
            for url in (registry.LISTENER, registry.ROUTE)
            for name, message in self.resources[url].items()
        )


class ConfigStageBuilder:
    """Builds a ConfigStage from a model, given the previous round's."""

    def __init__(
        self,
        model: MeshModel,
        options: TranslateOptions,
        previous: ConfigStage | None,
        last_good: Mapping[ObjectRef, ConfigOutput],
    ) -> None:
        self.model = model
        self.options = options
        self.previous = previous or ConfigStage()
        self.previous_good = last_good
        self.stage = ConfigStage()

    def build(self) -> ConfigStage:
        configs = []
        for config in self.model.envoy_configs:
            if node_selects(config, self.options):
                configs.append(config)
            else:
                self.stage.elsewhere.add(config.ref)
        for config in sorted(configs, key=lambda c: (c.creation_timestamp, c.ref)):
            self._config(config)
        return self.stage

    def _output(self, config: EnvoyConfig) -> tuple[ConfigOutput | None, list[ObjectError]]:
        parsed = self.previous.parsed.get(config) or parse_config(config)
        self.stage.parsed[config] = parsed
        services = self.model.services
        key = tuple(services.get(ref.service) for ref, _ in parsed.service_refs)
        cached = self.previous.outputs.get(config.ref)
        if cached is not None and cached[0] is parsed and cached[1] == key:
            self.stage.outputs[config.ref] = cached
            return cached[2], []
        output, errors = config_output(parsed, services)
        if output is not None:
            self.stage.outputs[config.ref] = (parsed, key, output)
        return output, errors

    def _config(self, config: EnvoyConfig) -> None:
        try:
            output, errors = self._output(config)
        except Exception as exc:
            # As in parse_config: a bug costs this CEC only, and is logged.
            log.exception("envoy_config_internal_error", object=str(config.ref))
            reason = f"internal error while translating: {exc!r}"
            output, errors = None, [ObjectError(config.ref, "spec.resources", reason)]
        if output is not None:
            errors = self._conflicts(config.ref, output)
        if not errors and output is not None:
            self._accept(config, output)
            return
        previous = self.previous_good.get(config.ref)
        if previous is not None and self._conflicts(config.ref, previous):
            previous = None
        note = self._dangling(previous) if previous is not None else ""
        self.stage.errors.extend(
            replace(e, kept_previous=previous is not None, reason=e.reason + note) for e in errors
        )
        if previous is not None:
            self._accept(config, previous)

    def _dangling(self, output: ConfigOutput) -> str:
        """What status must add when the version kept in effect routes to
        Services that were deleted since: those routes answer 503."""
        gone = sorted(
            {
                str(c.service)
                for c in output.service_clusters
                if c.service not in self.model.services
            }
        )
        if not gone:
            return ""
        return (
            f"; the previous version stays in effect, but its routes to deleted "
            f"Service(s) {', '.join(gone)} answer 503 (no endpoints)"
        )

    def _conflicts(self, ref: ObjectRef, output: ConfigOutput) -> list[ObjectError]:
        errors = []
        for type_url, named in output.resources.items():
            kind = type_url.rpartition(".")[2]
            for name in named:
                where = f"{output.owners.get(name, 'spec.resources')}.name"
                other = self.stage.owner.get((type_url, name))
                if other is not None:
                    reason = f"{kind} {name!r} is already defined by {other}"
                elif name.startswith(_RESERVED_PREFIX):
                    reason = f"{kind} name {name!r} is reserved for nodemesh"
                elif type_url == registry.CLUSTER and self._is_service_cluster(name):
                    reason = f"cluster {name!r} would replace the cluster of that Service"
                else:
                    continue
                errors.append(ObjectError(ref, where, reason))
        return errors

    def _is_service_cluster(self, name: str) -> bool:
        match = SERVICE_REF.match(name)
        return match is not None and ServiceName(match[1], match[2]) in self.model.services

    def _accept(self, config: EnvoyConfig, output: ConfigOutput) -> None:
        stage = self.stage
        stage.last_good[config.ref] = output
        stage.warnings.extend(output.warnings)
        for type_url, named in output.resources.items():
            for name, message in named.items():
                stage.resources[type_url][name] = message
                stage.owner[(type_url, name)] = config.ref
                stage.fields[(type_url, name)] = output.owners.get(name, "spec.resources")
        for cluster in output.service_clusters:
            stage.needed[cluster.name] = cluster
        for entry in (*config.services, *config.backend_services):
            self._feed(entry.service, entry.ports)

    def _feed(self, name: ServiceName, ports: tuple[int, ...]) -> None:
        """spec.services and spec.backendServices feed EDS for their ports."""
        service = self.model.services.get(name)
        if service is None:
            return  # the model store reports missing Services of a CEC
        for port in service.ports:
            if not ports or port.port in ports:
                cluster = service_cluster(service, port.port)
                self.stage.needed.setdefault(cluster.name, cluster)
