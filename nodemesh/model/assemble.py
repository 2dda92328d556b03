"""The accepted objects of a MeshStore and the snapshot assembled from them.

Everything derived is cached and re-derived only when an input changed: the
per-kind tuples, each Service's backends (only Services whose Service object
or EndpointSlices changed), and the redirects (only when Services, pods,
CECs or CNPs changed). A one-EndpointSlice change therefore costs one slice
parse, one Service's backends and a few dict copies, not a rebuild.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from nodemesh.model.backends import service_backends
from nodemesh.model.clients import ClientIndex
from nodemesh.model.digest import object_digest
from nodemesh.model.gamma import Gamma, RouteResult, TableMemo, assemble_gamma, route_result
from nodemesh.model.objects import (
    EndpointSlice,
    EnvoyConfig,
    Kind,
    L7Redirect,
    ObjectError,
    ObjectRef,
    ObjectWarning,
    Pod,
    Service,
    ServiceName,
)
from nodemesh.model.parse import ModelObject
from nodemesh.model.redirects import derive_redirects, policy_warnings
from nodemesh.model.routes import Route
from nodemesh.model.snapshot import BackendAddress, MeshModel

_CONFIG_KINDS = (Kind.ENVOY_CONFIG, Kind.CLUSTERWIDE_ENVOY_CONFIG)
_POLICY_KINDS = (Kind.NETWORK_POLICY, Kind.CLUSTERWIDE_NETWORK_POLICY)
_ROUTE_KINDS = (Kind.HTTP_ROUTE, Kind.GRPC_ROUTE)
# Pods are not listed: the client index says when a pod change matters.
_REDIRECT_INPUTS = (
    Kind.SERVICE,
    *_CONFIG_KINDS,
    *_POLICY_KINDS,
    *_ROUTE_KINDS,
    Kind.REFERENCE_GRANT,
)
_GAMMA_INPUTS = (Kind.SERVICE, *_CONFIG_KINDS, *_ROUTE_KINDS, Kind.REFERENCE_GRANT)
# What every route's resolution reads besides the route itself.
_GAMMA_WORLD = (Kind.SERVICE, *_CONFIG_KINDS, Kind.REFERENCE_GRANT)
_MASK = (1 << 128) - 1
Backends = Mapping[int, tuple[BackendAddress, ...]]


class _Order:
    """One kind's objects in (namespace, name) order, kept up to date cheaply.

    A few changes are applied in place by bisection, so a one-object change
    never sorts thousands of objects; a burst (a first load, a relist) is
    sorted once instead, because inserting n objects one by one into a list
    is quadratic (20,000 pods: about a quarter of a second of memmove).
    """

    __slots__ = ("by_key", "changed", "keys", "objects")
    _BURST = 256

    def __init__(self) -> None:
        self.by_key: dict[str, Any] = {}
        # "\0" sorts before every character a name may hold, so these order
        # exactly as (namespace, name) while comparing one string, not a tuple.
        self.keys: list[str] = []
        self.objects: list[Any] = []
        self.changed: set[str] | None = set()  # None: re-sort everything

    def put(self, ref: ObjectRef, obj: Any) -> None:
        key = f"{ref.namespace}\0{ref.name}"
        if obj is None:
            self.by_key.pop(key, None)
        else:
            self.by_key[key] = obj
        if self.changed is not None:
            self.changed.add(key)
            if len(self.changed) > self._BURST:
                self.changed = None

    def ordered(self) -> tuple[Any, ...]:
        if self.changed is None:
            self.keys = sorted(self.by_key)
            self.objects = [self.by_key[k] for k in self.keys]
        else:
            for key in self.changed:
                self._place(key, self.by_key.get(key))
        self.changed = set()
        return tuple(self.objects)

    def _place(self, key: str, obj: Any) -> None:
        index = bisect.bisect_left(self.keys, key)
        present = index < len(self.keys) and self.keys[index] == key
        if obj is None:
            if present:
                del self.keys[index]
                del self.objects[index]
        elif present:
            self.objects[index] = obj
        else:
            self.keys.insert(index, key)
            self.objects.insert(index, obj)


class Assembly:
    def __init__(self, reserved_ports: Collection[int] = ()) -> None:
        self._reserved = tuple(reserved_ports)
        self._objects: dict[Kind, dict[ObjectRef, Any]] = {k: {} for k in Kind}
        self._warnings: dict[ObjectRef, tuple[ObjectWarning, ...]] = {}
        self._digests: dict[ObjectRef, int] = {}
        self._sum = 0
        self._tuples: dict[Kind, tuple[Any, ...]] = {k: () for k in Kind}
        self._order: dict[Kind, _Order] = {k: _Order() for k in Kind}
        self._stale_kinds: set[Kind] = set()
        self._services: dict[ServiceName, Service] = {}
        self._services_view: Mapping[ServiceName, Service] = MappingProxyType({})
        self._slices: dict[ServiceName, dict[ObjectRef, EndpointSlice]] = {}
        self._backends: dict[ServiceName, Backends] = {}
        self._backends_view: Mapping[ServiceName, Backends] = MappingProxyType({})
        self._stale_backends: set[ServiceName] = set()
        self._redirects: tuple[L7Redirect, ...] = ()
        self._gamma = Gamma()
        self._routes: tuple[Route, ...] = ()
        self._route_results: dict[ObjectRef, RouteResult] = {}
        self._table_memo: TableMemo = {}
        self._clients = ClientIndex()
        self._clients_moved = False
        self.redirect_errors: tuple[ObjectError, ...] = ()
        self._warnings_view: tuple[ObjectWarning, ...] = ()
        self._derived_warnings: tuple[ObjectWarning, ...] = ()
        self._stale_warnings = False

    def has(self, ref: ObjectRef) -> bool:
        return ref in self._digests

    @property
    def services(self) -> Mapping[ServiceName, Service]:
        return self._services

    @property
    def configs(self) -> dict[ObjectRef, EnvoyConfig]:
        return {**self._objects[Kind.ENVOY_CONFIG], **self._objects[Kind.CLUSTERWIDE_ENVOY_CONFIG]}

    def counts(self) -> dict[Kind, int]:
        return {kind: len(objects) for kind, objects in self._objects.items()}

    def put(
        self, ref: ObjectRef, obj: ModelObject | None, warnings: tuple[ObjectWarning, ...] | None
    ) -> None:
        """Make `obj` the accepted version of `ref` (None: no version). `warnings`
        None keeps the warnings already recorded for it."""
        # ObjectRef hashing is Python-level (dataclass and enum), and a full
        # build puts every object: each dict lookup here is counted.
        if (warnings or (self._warnings and (warnings is not None or obj is None))) and (
            self._warnings.get(ref, ()) != (warnings or ())
        ):
            self._stale_warnings = True
            if warnings:
                self._warnings[ref] = warnings
            else:
                del self._warnings[ref]
        kind = ref.kind
        held = self._objects[kind]
        old = held.get(ref)
        if old is obj or (old is not None and old == obj):
            return
        digests = self._digests
        total = self._sum
        if old is not None:
            total -= digests[ref]
        if obj is None:
            del held[ref]
            del digests[ref]
        else:
            held[ref] = obj
            digest = digests[ref] = object_digest(obj)
            total += digest
        self._sum = total & _MASK
        self._order[kind].put(ref, obj)
        self._stale_kinds.add(kind)
        if kind is Kind.SERVICE:
            self._put_service(ref, obj)
        elif kind is Kind.ENDPOINT_SLICE:
            self._put_slice(ref, old, obj)
        elif kind is Kind.POD:
            pod = obj if isinstance(obj, Pod) else None
            if self._clients.put(ref, old, pod):
                self._clients_moved = True

    def _put_service(self, ref: ObjectRef, obj: object) -> None:
        name = ServiceName(ref.namespace, ref.name)
        if isinstance(obj, Service):
            self._services[name] = obj
        else:
            self._services.pop(name, None)
        self._stale_backends.add(name)

    def _put_slice(self, ref: ObjectRef, old: object, new: object) -> None:
        for eps, keep in ((old, False), (new, True)):
            if not isinstance(eps, EndpointSlice) or not eps.service_name:
                continue
            name = ServiceName(ref.namespace, eps.service_name)
            held = self._slices.setdefault(name, {})
            if keep:
                held[ref] = eps
            else:
                held.pop(ref, None)
            self._stale_backends.add(name)

    def refresh(self) -> None:
        """Re-derive whatever the last `put`s made stale."""
        stale = self._stale_kinds
        for kind in stale:
            self._tuples[kind] = self._order[kind].ordered()
        if stale & {Kind.SERVICE}:
            self._services_view = MappingProxyType(dict(self._services))
        if self._stale_backends:
            for name in self._stale_backends:
                service = self._services.get(name)
                if service is None:
                    self._backends.pop(name, None)
                else:
                    slices = self._slices.get(name, {}).values()
                    self._backends[name] = service_backends(service, slices)
            self._stale_backends = set()
            self._backends_view = MappingProxyType(dict(self._backends))
        if stale & set(_GAMMA_INPUTS):
            self._refresh_gamma(world_changed=bool(stale & set(_GAMMA_WORLD)))
        if self._clients_moved or stale & set(_REDIRECT_INPUTS):
            self._refresh_redirects()
        if self._stale_warnings:
            found = [w for notes in self._warnings.values() for w in notes]
            found.extend(self._derived_warnings)
            self._warnings_view = tuple(
                sorted(found, key=lambda w: (str(w.ref), w.field, w.reason))
            )
            self._stale_warnings = False
        self._stale_kinds = set()

    def _refresh_gamma(self, world_changed: bool) -> None:
        """Re-derive the GAMMA tables. A route whose object is the same as last
        round, in the same world (Services, grants, CECs), keeps its result,
        and a Service port whose entries all did keeps its table: one route
        edit among thousands costs one route's resolution and one port's sort."""
        routes = [*self._tuples[Kind.HTTP_ROUTE], *self._tuples[Kind.GRPC_ROUTE]]
        routes.sort(key=lambda r: (r.creation_timestamp, r.ref.namespace, r.ref.name))
        self._routes = tuple(routes)
        if world_changed:
            self._route_results = {}
        grants = self._tuples[Kind.REFERENCE_GRANT]
        cec_ports = None
        results = []
        kept: dict[ObjectRef, RouteResult] = {}
        for route in routes:
            known = self._route_results.get(route.ref)
            if known is None or known.route is not route:
                if cec_ports is None:
                    cec_ports = config_ports(
                        self._services, sorted(self.configs.values(), key=_age)
                    )
                known = route_result(route, self._services, grants, cec_ports)
            kept[route.ref] = known
            results.append(known)
        self._route_results = kept
        self._gamma = assemble_gamma(results, self._table_memo)

    def _refresh_redirects(self) -> None:
        self._clients_moved = False
        policies = [
            *self._tuples[Kind.NETWORK_POLICY],
            *self._tuples[Kind.CLUSTERWIDE_NETWORK_POLICY],
        ]
        redirects, self.redirect_errors = derive_redirects(
            self._services,
            sorted(self.configs.values(), key=_age),
            policies,
            self._clients,
            self._reserved,
            self._gamma.tables,
        )
        self.redirect_errors = (*self.redirect_errors, *self._gamma.errors)
        # Consumers skip work when the tuple is the very same object, so an
        # unchanged outcome (the usual case of a pod or Service edit) keeps it.
        if redirects != self._redirects:
            self._redirects = redirects
        derived = (*policy_warnings(self._services, policies), *self._gamma.warnings)
        if derived != self._derived_warnings:
            self._derived_warnings = derived
            self._stale_warnings = True

    def version(self) -> str:
        """Order-independent content hash of the accepted objects: the sum of
        per-object digests (kept up to date on every put), hashed once more."""
        return hashlib.blake2b(self._sum.to_bytes(16, "big"), digest_size=8).hexdigest()

    def unchanged_since(self, model: MeshModel, errors: tuple[ObjectError, ...]) -> bool:
        return (
            model.version == self.version()
            and model.errors == errors
            and model.warnings == self._warnings_view
        )

    def snapshot(self, generation: int, errors: tuple[ObjectError, ...]) -> MeshModel:
        tuples = self._tuples
        return MeshModel(
            version=self.version(),
            generation=generation,
            services=self._services_view,
            endpoint_slices=tuples[Kind.ENDPOINT_SLICE],
            pods=tuples[Kind.POD],
            deployments=tuples[Kind.DEPLOYMENT],
            envoy_configs=_merge(tuples, _CONFIG_KINDS),
            network_policies=_merge(tuples, _POLICY_KINDS),
            redirects=self._redirects,
            errors=errors,
            backends=self._backends_view,
            warnings=self._warnings_view,
            routes=self._routes,
            reference_grants=tuples[Kind.REFERENCE_GRANT],
            gamma=self._gamma,
            namespaces=tuples[Kind.NAMESPACE],
            kube_network_policies=tuples[Kind.KUBE_NETWORK_POLICY],
        )


def config_ports(
    services: Mapping[ServiceName, Service], configs: Iterable[EnvoyConfig]
) -> dict[tuple[ServiceName, int], ObjectRef]:
    """The Service ports CECs redirect (`spec.services`), to the oldest CEC."""
    found: dict[tuple[ServiceName, int], ObjectRef] = {}
    for config in configs:
        for entry in config.services:
            service = services.get(entry.service)
            for port in service.ports if service is not None else ():
                if port.protocol == "TCP" and (not entry.ports or port.port in entry.ports):
                    found.setdefault((entry.service, port.port), config.ref)
    return found


def _age(config: EnvoyConfig) -> tuple[str, str, str]:
    return (config.creation_timestamp, config.ref.namespace, config.ref.name)


def _merge(tuples: dict[Kind, tuple[Any, ...]], kinds: tuple[Kind, ...]) -> tuple[Any, ...]:
    return tuple(item for kind in kinds for item in tuples[kind])
