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

import gc
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from types import MappingProxyType

import structlog
from google.protobuf.message import Message

from nodemesh.model.objects import ObjectRef
from nodemesh.model.snapshot import MeshModel
from nodemesh.xds.translate import registry
from nodemesh.xds.translate.access_log import ALS_CLUSTER, als_cluster
from nodemesh.xds.translate.configs import ConfigStage, ConfigStageBuilder
from nodemesh.xds.translate.endpoints import EndpointStage, endpoint_stage
from nodemesh.xds.translate.metrics import RESOURCES, STAGES, TRANSLATE_SECONDS
from nodemesh.xds.translate.proxyless import ProxylessBuilder, ProxylessStage, same_messages
from nodemesh.xds.translate.redirects import RedirectBuilder
from nodemesh.xds.translate.result import ConfigOutput, TranslateOptions, Translation

log = structlog.get_logger(__name__)


class Translator:
    """Translates successive models for one node, reusing what did not change.

    A round has three stages, each reused whole when its inputs are the same
    objects as last round, else rebuilt from per-object memos:
    CECs (parsed, resolved, conflicts, last good) -> redirect listeners and
    routes -> service clusters and endpoints.
    """

    def __init__(
        self, options: TranslateOptions | None = None, previous: Translation | None = None
    ) -> None:
        self.options = options or TranslateOptions()
        self._last_good: Mapping[ObjectRef, ConfigOutput] = (
            dict(previous.last_good) if previous else {}
        )
        self._configs: ConfigStage | None = None
        self._redirects = RedirectBuilder(self.options)
        self._endpoints: EndpointStage | None = None
        socket = self.options.access_log_socket
        # The agent's ALS socket, as a cluster of its own beside the services'.
        self._extra_clusters: Mapping[str, Message] = (
            {ALS_CLUSTER: als_cluster(socket)} if socket is not None else {}
        )
        # The last few joined listener/route mappings, by their inputs.
        self._joins: list[tuple[tuple[object, ...], Mapping[str, Message]]] = []
        domain = self.options.proxyless_domain
        self._proxyless = ProxylessBuilder(domain) if domain else None

    def translate(self, model: MeshModel) -> Translation:
        """Not thread-safe: one Translator serves one sequence of models."""
        started = time.perf_counter()
        # Like the model store's build: a full translation allocates many acyclic
        # objects, which the cyclic GC would rescan for nothing; pause it.
        paused = gc.isenabled()
        gc.disable()
        try:
            translation = self._translate(model)
        finally:
            if paused:
                gc.enable()
        seconds = time.perf_counter() - started
        TRANSLATE_SECONDS.observe(seconds)
        counts = {
            url.rpartition(".")[2]: len(named) for url, named in translation.resources.items()
        }
        for kind, count in counts.items():
            RESOURCES.labels(type=kind).set(count)
        log.debug(
            "translated",
            version=model.version,
            seconds=round(seconds, 6),
            errors=len(translation.errors),
            **counts,
        )
        return translation

    def _translate(self, model: MeshModel) -> Translation:
        configs = ConfigStageBuilder(model, self.options, self._configs, self._last_good).build()
        previous_redirects, previous_endpoints = self._redirects.previous, self._endpoints
        redirects = self._redirects.build(model, configs)
        proxyless = ProxylessStage(needed=redirects.needed)
        if self._proxyless is not None:
            route_maps = (configs.resources[registry.ROUTE], redirects.routes)
            proxyless = self._proxyless.build(model, route_maps, redirects.needed)
        endpoints = endpoint_stage(
            model, proxyless.needed, self._endpoints, self.options.connect_timeout_ms
        )
        STAGES.labels(stage="redirects", mode=_mode(redirects is previous_redirects)).inc()
        patched = (
            previous_endpoints is not None and endpoints.clusters is previous_endpoints.clusters
        )
        STAGES.labels(stage="endpoints", mode="patched" if patched else "rebuilt").inc()
        self._configs, self._endpoints, self._last_good = configs, endpoints, configs.last_good
        resources: dict[str, Mapping[str, Message]] = {
            registry.CLUSTER: _merged(
                configs.resources[registry.CLUSTER],
                {**endpoints.clusters, **self._extra_clusters}
                if self._extra_clusters
                else endpoints.clusters,
            ),
            registry.ENDPOINT: _merged(configs.resources[registry.ENDPOINT], endpoints.assignments),
            registry.LISTENER: self._joined(
                configs.resources[registry.LISTENER],
                redirects.listeners,
                proxyless.listeners,
                redirects.unbound,
            ),
            registry.ROUTE: self._joined(
                configs.resources[registry.ROUTE], redirects.routes, proxyless.routes
            ),
        }
        return Translation(
            model_version=model.version,
            resources=MappingProxyType(resources),
            errors=(*configs.errors, *redirects.errors),
            warnings=(*configs.warnings, *redirects.warnings),
            last_good=MappingProxyType(dict(configs.last_good)),
            named_only=MappingProxyType(dict(proxyless.named_only)),
        )

    def _joined(
        self,
        first: Mapping[str, Message],
        second: Mapping[str, Message],
        third: Mapping[str, Message],
        without: AbstractSet[str] = frozenset(),
    ) -> Mapping[str, Message]:
        """`_merged(first, second + third)`; the very same mapping as last
        round when all inputs are the same objects (an endpoint change then
        walks no listener or route)."""
        inputs = (first, second, third, without)
        for known, joined in self._joins:
            if known[3] is without and all(
                map(same_messages, known[:3], inputs[:3])  # type: ignore[arg-type]
            ):
                return joined
        joined = _merged(first, {**second, **third}, without)
        self._joins = [*self._joins[-3:], (inputs, joined)]
        return joined


def _mode(reused: bool) -> str:
    return "reused" if reused else "rebuilt"


def _merged(
    first: Mapping[str, Message],
    second: Mapping[str, Message],
    without: AbstractSet[str] = frozenset(),
) -> Mapping[str, Message]:
    """Read-only union; `second` wins (a redirect binds a CEC's own listener)."""
    if not first:
        return MappingProxyType(dict(second))
    merged = {**first, **second}
    for name in without:
        del merged[name]
    return MappingProxyType(merged)


def translate(
    model: MeshModel,
    options: TranslateOptions | None = None,
    previous: Translation | None = None,
) -> Translation:
    """Translate one model. Pass the previous Translation so a CEC that stops
    translating keeps its last good resources; use a Translator to also reuse
    unchanged messages between models."""
    return Translator(options, previous).translate(model)
