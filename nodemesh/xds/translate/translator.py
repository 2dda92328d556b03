"""The mesh model, translated into the Envoy resources of one node.

A `Translator` is long-lived and keeps two memories between models:
- per-object memos, so an unchanged input gives back the very same message
  (a one-endpoint change rebuilds one ClusterLoadAssignment). Lookups try
  object identity first: a model builder that shares unchanged objects
  between versions makes a round cost little more than a walk over them.
  Each memo holds only what the latest round used, so memory follows the
  model's size.
- the last good output of each CEC: a CEC that stops translating (a route to
  a Service that no longer exists, a name conflict) keeps serving what it
  last translated to, and its errors say so (kept_previous).

`translate(model, options, previous)` is the one-shot form; passing the
previous Translation carries the last-good memory over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from google.protobuf.message import Message

from nodemesh.model.objects import (
    EnvoyConfig,
    ObjectError,
    ObjectRef,
    ObjectWarning,
    Service,
    ServiceName,
)
from nodemesh.model.snapshot import BackendAddress, MeshModel
from nodemesh.xds.translate import registry
from nodemesh.xds.translate.configs import config_output
from nodemesh.xds.translate.envoy_config import ParsedConfig, parse_config
from nodemesh.xds.translate.redirects import RedirectBuilder
from nodemesh.xds.translate.result import (
    ConfigOutput,
    ServiceCluster,
    TranslateOptions,
    Translation,
)
from nodemesh.xds.translate.services import (
    SERVICE_REF,
    build_cluster,
    build_load_assignment,
    cluster_name,
)

_RESERVED_PREFIX = "nodemesh/"
# A CEC's memoized output: the parse it came from and the Services it resolved.
_OutputMemo = dict[ObjectRef, tuple[ParsedConfig, tuple[Service | None, ...], ConfigOutput]]


def node_selects(config: EnvoyConfig, options: TranslateOptions) -> bool:
    """Whether a CEC applies to the node these options describe."""
    if config.node_selector is None or options.node_name is None:
        return True
    labels = dict(options.node_labels)
    labels.setdefault("kubernetes.io/hostname", options.node_name)
    return config.node_selector.matches(labels)


class Translator:
    """Translates successive models for one node, reusing what did not change."""

    def __init__(
        self, options: TranslateOptions | None = None, previous: Translation | None = None
    ) -> None:
        self.options = options or TranslateOptions()
        self._last_good: dict[ObjectRef, ConfigOutput] = (
            dict(previous.last_good) if previous else {}
        )
        self._parsed: dict[EnvoyConfig, ParsedConfig] = {}
        self._outputs: dict[
            ObjectRef, tuple[ParsedConfig, tuple[Service | None, ...], ConfigOutput]
        ] = {}
        self._clusters: dict[str, Message] = {}
        self._assignments: dict[str, tuple[tuple[BackendAddress, ...], Message]] = {}
        self.redirects = RedirectBuilder(self.options)

    def translate(self, model: MeshModel) -> Translation:
        round_ = _Round(self, model)
        return round_.run()


class _Round:
    """One model's translation; swaps the translator's memos at the end."""

    def __init__(self, translator: Translator, model: MeshModel) -> None:
        self.t = translator
        self.model = model
        self.out: dict[str, dict[str, Message]] = {url: {} for url in registry.RESOURCE_TYPES}
        self.owner: dict[tuple[str, str], ObjectRef] = {}
        self.errors: list[ObjectError] = []
        self.warnings: list[ObjectWarning] = []
        self.needed: dict[str, ServiceCluster] = {}
        self.last_good: dict[ObjectRef, ConfigOutput] = {}
        self.parsed: dict[EnvoyConfig, ParsedConfig] = {}
        self.outputs: dict[
            ObjectRef, tuple[ParsedConfig, tuple[Service | None, ...], ConfigOutput]
        ] = {}

    def run(self) -> Translation:
        configs = [c for c in self.model.envoy_configs if node_selects(c, self.t.options)]
        for config in sorted(configs, key=lambda c: (c.creation_timestamp, c.ref)):
            self._config(config)
        found = self.t.redirects.build(self.model, self.out, self.needed)
        self.errors.extend(found.errors)
        self.warnings.extend(found.warnings)
        self._service_clusters()
        self.t._parsed, self.t._outputs, self.t._last_good = (
            self.parsed,
            self.outputs,
            self.last_good,
        )
        return Translation(
            model_version=self.model.version,
            resources=MappingProxyType(
                {url: MappingProxyType(named) for url, named in self.out.items()}
            ),
            errors=tuple(self.errors),
            warnings=tuple(self.warnings),
            last_good=MappingProxyType(dict(self.last_good)),
        )

    def _parse(self, config: EnvoyConfig) -> ParsedConfig:
        parsed = self.t._parsed.get(config) or parse_config(config)
        self.parsed[config] = parsed
        return parsed

    def _output(self, config: EnvoyConfig) -> tuple[ConfigOutput | None, list[ObjectError]]:
        parsed = self._parse(config)
        services = self.model.services
        key = tuple(services.get(ref.service) for ref, _ in parsed.service_refs)
        cached = self.t._outputs.get(config.ref)
        if cached is not None and cached[0] is parsed and cached[1] == key:
            self.outputs[config.ref] = cached
            return cached[2], []
        output, errors = config_output(parsed, services)
        if output is not None:
            self.outputs[config.ref] = (parsed, key, output)
        return output, errors

    def _config(self, config: EnvoyConfig) -> None:
        output, errors = self._output(config)
        if output is not None:
            errors = self._conflicts(config.ref, output)
        if not errors and output is not None:
            self._accept(config, output)
            return
        previous = self.t._last_good.get(config.ref)
        if previous is not None and self._conflicts(config.ref, previous):
            previous = None
        self.errors.extend(replace(e, kept_previous=previous is not None) for e in errors)
        if previous is not None:
            self._accept(config, previous)

    def _conflicts(self, ref: ObjectRef, output: ConfigOutput) -> list[ObjectError]:
        errors = []
        for type_url, named in output.resources.items():
            kind = type_url.rpartition(".")[2]
            for name in named:
                where = f"{output.owners.get(name, 'spec.resources')}.name"
                other = self.owner.get((type_url, name))
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
        self.last_good[config.ref] = output
        self.warnings.extend(output.warnings)
        for type_url, named in output.resources.items():
            for name, message in named.items():
                self.out[type_url][name] = message
                self.owner[(type_url, name)] = config.ref
        for cluster in output.service_clusters:
            self.needed[cluster.name] = cluster
        for entry in (*config.services, *config.backend_services):
            self._feed(entry.service, entry.ports)

    def _feed(self, name: ServiceName, ports: tuple[int, ...]) -> None:
        """Spec.services and spec.backendServices feed EDS for their ports."""
        service = self.model.services.get(name)
        if service is None:
            return  # the model store reports missing Services of a CEC
        for port in service.ports:
            if not ports or port.port in ports:
                cluster = cluster_name(service, port.port)
                self.needed.setdefault(cluster, ServiceCluster(cluster, name, port.port))

    def _service_clusters(self) -> None:
        clusters: dict[str, Message] = {}
        assignments: dict[str, tuple[tuple[BackendAddress, ...], Message]] = {}
        old_clusters, old_assignments = self.t._clusters, self.t._assignments
        timeout = self.t.options.connect_timeout_ms
        out_clusters, out_assignments = self.out[registry.CLUSTER], self.out[registry.ENDPOINT]
        for name in sorted(self.needed):
            cluster = self.needed[name]
            if name in out_clusters:
                continue  # conflicts were rejected on the CEC's side; never reached
            message = old_clusters.get(name) or build_cluster(name, timeout)
            clusters[name] = out_clusters[name] = message
            backends = self.model.backends_of(cluster.service, cluster.port)
            cached = old_assignments.get(name)
            if cached is None or not (cached[0] is backends or cached[0] == backends):
                cached = (backends, build_load_assignment(name, backends))
            assignments[name] = cached
            out_assignments[name] = cached[1]
        self.t._clusters, self.t._assignments = clusters, assignments


def translate(
    model: MeshModel,
    options: TranslateOptions | None = None,
    previous: Translation | None = None,
) -> Translation:
    """Translate one model. Pass the previous Translation so a CEC that stops
    translating keeps its last good resources; use a Translator to also reuse
    unchanged messages between models."""
    return Translator(options, previous).translate(model)


def resources_by_type(translation: Translation) -> Mapping[str, int]:
    """How many resources of each type a translation holds (for logs and status)."""
    return {url: len(named) for url, named in translation.resources.items()}
