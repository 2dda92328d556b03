"""Proxyless gRPC clients: every Service port as an `xds:///` target.

gRPC's xDS client (grpcio, grpc-go, grpc-java) resolves
`xds:///<svc>.<ns>.svc.<cluster domain>:<port>` (Istio's naming, what gRPC
users type) by asking LDS for a Listener of exactly that name. For each
Service port nodemesh serves:

- a Listener of that name holding an `api_listener`: an HttpConnectionManager
  that takes its routes over ADS (RDS) under the same name;
- that RouteConfiguration: the Service's L7 routing where the node Envoy
  has one (the RouteConfiguration the Service port's redirect serves: a
  CiliumEnvoyConfig split, a GAMMA route, or a policy redirect's route to the
  Service), otherwise one route to the Service port's EDS cluster;
- the Service port's EDS cluster and its endpoints (the shared service
  cluster the node Envoy uses too).

These resources are served only to clients that name them: a node Envoy's
wildcard LDS/CDS never sees them (`ProxylessStage.named_only`). The copy of
the Service's routing differs from the node Envoy's only in its name and in
virtual host domains: gRPC matches domains against the target name, so a
virtual host that names the Service (`svc`, `svc.ns`, `svc.ns.svc`, the
full name, each with or without the port) gets the full target added.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import Message

from nodemesh.model.objects import L7Redirect, Service, ServiceName
from nodemesh.model.snapshot import MeshModel
from nodemesh.xds.translate import registry
from nodemesh.xds.translate.listeners import ROUTER_FILTER, service_route, stat_name
from nodemesh.xds.translate.result import ServiceCluster
from nodemesh.xds.translate.services import service_cluster


def target_name(service: ServiceName, port: int, domain: str) -> str:
    """The xDS name a gRPC client asks for: `xds:///` + this."""
    return f"{service.name}.{service.namespace}.svc.{domain}:{port}"


def api_listener(name: str) -> listener_pb2.Listener:
    """A Listener for gRPC's xDS client: routes over RDS under its own name."""
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=stat_name("proxyless", name))
    manager.rds.route_config_name = name
    manager.rds.config_source.ads.SetInParent()
    manager.rds.config_source.resource_api_version = config_source_pb2.V3
    manager.http_filters.add(name=ROUTER_FILTER).typed_config.CopyFrom(
        registry.pack(router_pb2.Router())
    )
    listener = listener_pb2.Listener(name=name)
    listener.api_listener.api_listener.CopyFrom(registry.pack(manager))
    return listener


def _service_hosts(service: ServiceName, port: int, domain: str) -> frozenset[str]:
    """Every name Kubernetes DNS gives the Service, with and without the port."""
    short = (
        service.name,
        f"{service.name}.{service.namespace}",
        f"{service.name}.{service.namespace}.svc",
        f"{service.name}.{service.namespace}.svc.{domain}",
    )
    return frozenset((*short, *(f"{host}:{port}" for host in short)))


def proxyless_route(
    name: str, routing: route_pb2.RouteConfiguration, hosts: frozenset[str]
) -> route_pb2.RouteConfiguration:
    """The Service's routing under the target's name, its virtual hosts that
    name the Service also answering to the full target name."""
    route = route_pb2.RouteConfiguration()
    route.CopyFrom(routing)
    route.name = name
    for host in route.virtual_hosts:
        if name not in host.domains and any(d in hosts for d in host.domains):
            host.domains.append(name)
    return route


@dataclass(frozen=True, slots=True)
class _Built:
    key: tuple[object, ...]
    listener: Message
    route: Message
    cluster: ServiceCluster


@dataclass(eq=False)
class ProxylessStage:
    """One round's proxyless resources and the inputs they were built from.

    `needed` is every service cluster this round serves (the redirects' and
    the CECs' plus one per Service port), the same object while nothing it
    depends on changed, so the endpoint stage can patch rather than rebuild.
    `named_only`: type URL -> names served only to clients that ask for them.
    """

    services: object = None
    redirects: object = None
    routing: tuple[object, ...] = ()
    base_needed: object = None
    route_inputs: tuple[Mapping[str, Message], ...] = ()  # the route mappings read
    listeners: dict[str, Message] = field(default_factory=dict)
    routes: dict[str, Message] = field(default_factory=dict)
    needed: Mapping[str, ServiceCluster] = field(default_factory=dict)
    named_only: Mapping[str, frozenset[str]] = field(default_factory=dict)
    memo: dict[str, _Built] = field(default_factory=dict)


def _routing_of(
    redirects: tuple[L7Redirect, ...], routes: Mapping[str, Message]
) -> dict[tuple[ServiceName, int], Message]:
    """(Service, port) -> the RouteConfiguration its redirect serves."""
    found: dict[tuple[ServiceName, int], Message] = {}
    for redirect in redirects:
        route = routes.get(redirect.route_config) or routes.get(redirect.listener)
        if route is not None:
            found.setdefault((redirect.service, redirect.port), route)
    return found


def same_messages(a: Mapping[str, Message], b: Mapping[str, Message]) -> bool:
    """The same names, in the same order, holding the very same messages
    (scanned at C speed; the CEC stage rebuilds its mappings every round)."""
    if a is b:
        return True
    return (
        len(a) == len(b) and all(map(operator.is_, a.values(), b.values())) and list(a) == list(b)
    )


def _identical(a: tuple[Mapping[str, Message], ...], b: tuple[Mapping[str, Message], ...]) -> bool:
    return len(a) == len(b) and all(map(same_messages, a, b))


class ProxylessBuilder:
    """Builds a round's ProxylessStage, reusing unchanged targets' messages."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.previous = ProxylessStage()

    def build(
        self,
        model: MeshModel,
        route_maps: tuple[Mapping[str, Message], ...],
        needed: Mapping[str, ServiceCluster],
    ) -> ProxylessStage:
        """`route_maps`: the round's RouteConfigurations (the CECs', the
        redirects'; later ones win); `needed`: the service clusters the node
        Envoy uses. Reused whole when every input is the same object as last
        round (an endpoint change), else rebuilt from per-target memos."""
        previous = self.previous
        same_inputs = (
            previous.services is model.services
            and previous.redirects is model.redirects
            and previous.base_needed is needed
        )
        if same_inputs and _identical(previous.route_inputs, route_maps):
            return previous
        routes: dict[str, Message] = {}
        for mapping in route_maps:
            routes.update(mapping)
        routing = _routing_of(model.redirects, routes)
        signature = tuple(
            sorted(((s.namespace, s.name, p), id(r)) for (s, p), r in routing.items())
        )
        if same_inputs and previous.routing == signature:
            previous.route_inputs = route_maps
            return previous
        stage = ProxylessStage(model.services, model.redirects, signature, needed, route_maps)
        all_needed = dict(needed)
        for service in model.services.values():
            for port in sorted({p.port for p in service.ports if p.protocol == "TCP"}):
                built = self._target(service, port, routing.get((service.service_name, port)))
                name = built.listener.name  # type: ignore[attr-defined]
                stage.memo[name] = built
                stage.listeners[name] = built.listener
                stage.routes[name] = built.route
                all_needed.setdefault(built.cluster.name, built.cluster)
        stage.needed = all_needed
        stage.named_only = {
            registry.LISTENER: frozenset(stage.listeners),
            registry.ROUTE: frozenset(stage.routes),
            registry.CLUSTER: frozenset(all_needed.keys() - needed.keys()),
        }
        self.previous = stage
        return stage

    def _target(self, service: Service, port: int, routing: Message | None) -> _Built:
        name = target_name(service.service_name, port, self.domain)
        key = (service, port, routing)
        known = self.previous.memo.get(name)
        if known is not None and all(a is b or a == b for a, b in zip(known.key, key, strict=True)):
            return known
        cluster = service_cluster(service, port)
        if isinstance(routing, route_pb2.RouteConfiguration):
            hosts = _service_hosts(service.service_name, port, self.domain)
            route = proxyless_route(name, routing, hosts)
        else:
            route = service_route(name, cluster.name)
        listener = known.listener if known is not None else api_listener(name)
        return _Built(key, listener, route, cluster)
