"""L7 redirects to listeners (and, for policy-only redirects, their routes).

Redirects that name the same listener share it (a CEC listener serving
several services): it is bound to all their proxy ports, and its RBAC filter
ties each redirect's permissions to that redirect's destination when the
listener can tell them apart (distinct proxy ports, or the original
destination restored by the original_dst listener filter). When it cannot,
their policies apply together: a limitation, as Envoy then sees one stream
of connections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from google.protobuf.message import Message

from nodemesh.model.gamma import RouteEntry
from nodemesh.model.objects import (
    L7Redirect,
    ObjectError,
    ObjectRef,
    ObjectWarning,
    RedirectOrigin,
    ServiceName,
)
from nodemesh.model.redirects import consumer_route_name
from nodemesh.model.snapshot import MeshModel
from nodemesh.xds.translate import registry
from nodemesh.xds.translate.access_log import with_access_log
from nodemesh.xds.translate.configs import ConfigStage
from nodemesh.xds.translate.gamma import (
    GammaRoute,
    add_consumer_chains,
    consumer_ips,
    route_config_for,
)
from nodemesh.xds.translate.listeners import (
    HttpListeners,
    bind,
    destination_of,
    service_route,
    with_rbac,
)
from nodemesh.xds.translate.rbac import Notes, rbac_filter
from nodemesh.xds.translate.result import ServiceCluster, TranslateOptions
from nodemesh.xds.translate.services import service_cluster


@dataclass(frozen=True, slots=True)
class _Built:
    key: tuple[object, ...]
    message: Message
    notes: tuple[ObjectWarning | ObjectError, ...]


@dataclass(frozen=True, slots=True)
class _Rbac:
    http_filter: Message | None
    notes: tuple[ObjectWarning | ObjectError, ...]


@dataclass(eq=False)
class RedirectStage:
    """One round's redirect listeners and routes, with the inputs they came from
    (to be reused whole when those are the same next round) and the memos."""

    redirects: tuple[L7Redirect, ...] = ()
    services: object = None
    signature: tuple[tuple[str, int], ...] = ()
    config_needed: Mapping[str, ServiceCluster] = field(default_factory=dict)
    elsewhere: set[ObjectRef] = field(default_factory=set)
    listeners: dict[str, Message] = field(default_factory=dict)
    unbound: set[str] = field(default_factory=set)  # CEC listeners left out
    routes: dict[str, Message] = field(default_factory=dict)
    needed: dict[str, ServiceCluster] = field(default_factory=dict)
    errors: list[ObjectError] = field(default_factory=list)
    warnings: list[ObjectWarning] = field(default_factory=list)
    listener_memo: dict[str, _Built] = field(default_factory=dict)
    route_memo: dict[str, _Built] = field(default_factory=dict)
    rbac_memo: dict[tuple[object, ...], _Rbac] = field(default_factory=dict)
    gamma: object = None  # the model's GAMMA tables and pods this stage was built for
    # route config name -> ((entries, services view, entries, their Services), built)
    gamma_memo: dict[str, tuple[tuple[object, ...], GammaRoute]] = field(default_factory=dict)


def _reusable(previous: RedirectStage, model: MeshModel, configs: ConfigStage) -> bool:
    return (
        previous.services is model.services
        and previous.signature == configs.signature()
        and previous.config_needed == configs.needed
        and previous.elsewhere == configs.elsewhere
        and (previous.redirects is model.redirects or previous.redirects == model.redirects)
        and _same(previous.gamma, _gamma_inputs(model))
    )


def _same(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is b
    assert isinstance(a, tuple) and isinstance(b, tuple)
    return all(x is y for x, y in zip(a, b, strict=True))


def _gamma_inputs(model: MeshModel) -> object:
    """What GAMMA routes depend on beyond the redirects: the route tables and,
    when consumer routes exist, the pods (their addresses pick the chain)."""
    tables = model.gamma.tables
    if not tables:
        return None
    consumers = any(t.consumers for t in tables.values())
    return (model.gamma, model.pods if consumers else None)


class RedirectBuilder:
    """Builds a round's RedirectStage; memoizes listeners by their inputs."""

    def __init__(self, options: TranslateOptions) -> None:
        self.options = options
        self.previous = RedirectStage()
        self._http = HttpListeners(
            options.stat_prefix,
            options.listener_address,
            options.use_original_dst,
            log_access=options.access_log_socket is not None,
        )

    def build(self, model: MeshModel, configs: ConfigStage) -> RedirectStage:
        """Listeners (and routes) for every redirect, plus the service clusters
        they and the CECs route to."""
        if _reusable(self.previous, model, configs):
            return self.previous
        groups: dict[str, list[L7Redirect]] = {}
        for redirect in model.redirects:
            groups.setdefault(redirect.listener, []).append(redirect)
        stage = RedirectStage(
            model.redirects,
            model.services,
            configs.signature(),
            configs.needed,
            set(configs.elsewhere),
            needed=dict(configs.needed),
            gamma=_gamma_inputs(model),
        )
        ports: dict[int, str] = {}
        for name in sorted(groups):
            group = groups[name]
            if self._port_clash(name, group, ports, stage):
                continue
            route = self._route(model, configs, group, stage)
            if route is not None:
                built = self._listener(model, configs.resources, name, route, group, stage)
                stage.listeners[name] = built.message
                for note in built.notes:
                    if isinstance(note, ObjectError):
                        stage.errors.append(note)
                    else:
                        stage.warnings.append(note)
        self._unbound(configs, stage)
        self.previous = stage
        return stage

    def _unbound(self, configs: ConfigStage, stage: RedirectStage) -> None:
        """CEC listeners without an address that no redirect binds: Envoy would
        reject them (and with them the whole listener update), so leave them out."""
        for name, listener in configs.resources[registry.LISTENER].items():
            if name in stage.listeners or listener.HasField("address"):
                continue
            key = (registry.LISTENER, name)
            stage.unbound.add(name)
            stage.errors.append(
                ObjectError(
                    configs.owner[key],
                    f"{configs.fields[key]}.address",
                    f"listener {name!r} has no address and no redirected service uses it "
                    "(spec.services), so it has no proxy port; not served",
                )
            )

    def _port_clash(
        self, name: str, group: list[L7Redirect], ports: dict[int, str], stage: RedirectStage
    ) -> bool:
        for redirect in group:
            other = ports.setdefault(redirect.proxy_port, name)
            if other != name:
                stage.errors.extend(
                    ObjectError(
                        owner,
                        "spec",
                        f"proxy port {redirect.proxy_port} of {redirect.service}:"
                        f"{redirect.port} is already the port of listener {other!r}",
                    )
                    for owner in redirect.owners
                )
                return True
        return False

    def _route(
        self,
        model: MeshModel,
        configs: ConfigStage,
        group: list[L7Redirect],
        stage: RedirectStage,
    ) -> str | None:
        """The route config the group's listener serves, synthesized when needed:
        policy-only redirects, and a CEC's redirect when the CEC gave no route
        (rejected, or meant for other nodes), go to the Service itself."""
        cec = configs.resources
        first = group[0]
        name = first.route_config or first.listener
        if first.origin is RedirectOrigin.GATEWAY_ROUTE:
            return self._gamma_routes(model, first, stage)
        if first.origin is RedirectOrigin.ENVOY_CONFIG and (
            name in cec[registry.ROUTE] or first.listener in cec[registry.LISTENER]
        ):
            return name
        service = model.services.get(first.service)
        if service is None:
            stage.errors.extend(
                ObjectError(o, "spec", f"redirected Service {first.service} does not exist")
                for o in first.owners
            )
            return None
        if first.origin is RedirectOrigin.ENVOY_CONFIG and first.owners[0] not in configs.elsewhere:
            stage.errors.append(
                ObjectError(
                    first.owners[0],
                    "spec.resources",
                    f"no RouteConfiguration {name!r} to serve {first.service}:{first.port}; "
                    "its requests go to the Service itself",
                )
            )
        target = service_cluster(service, first.port)
        cluster = target.name
        if cluster not in stage.needed:
            stage.needed[cluster] = target
        built = self.previous.route_memo.get(name)
        if built is None or built.key[0] != cluster:
            built = _Built((cluster,), service_route(name, cluster), ())
        stage.route_memo[name] = built
        stage.routes[name] = built.message
        return name

    def _gamma_routes(self, model: MeshModel, redirect: L7Redirect, stage: RedirectStage) -> str:
        """The producer and consumer RouteConfigurations of a GAMMA redirect."""
        table = model.gamma.tables[(redirect.service, redirect.port)]
        scopes: list[tuple[str, str | None]] = [(redirect.route_config, None)]
        scopes.extend(
            (consumer_route_name(redirect.route_config, ns), ns) for ns, _ in table.consumers
        )
        for name, namespace in scopes:
            entries = table.entries_for(namespace)
            known = self.previous.gamma_memo.get(name)
            key: tuple[object, ...]
            if known is not None and known[0][0] is entries and known[0][1] is model.services:
                # The model kept this port's table and every Service: same routes.
                key, built = known
            elif known is not None and known[0][2:] == (
                entries,
                services := tuple(model.services.get(s) for s in _services_of(entries)),
            ):
                key, built = (entries, model.services, entries, services), known[1]
            else:
                made = route_config_for(model, redirect.service, redirect.port, namespace, name)
                assert made is not None
                built = made
                services = tuple(model.services.get(s) for s in _services_of(entries))
                key = (entries, model.services, entries, services)
            stage.gamma_memo[name] = (key, built)
            stage.routes[name] = built.config
            stage.errors.extend(built.errors)
            for cluster in built.clusters:
                if cluster.http2 or cluster.name not in stage.needed:
                    stage.needed[cluster.name] = cluster
        return redirect.route_config

    def _destinations(
        self, model: MeshModel, group: Sequence[L7Redirect]
    ) -> list[tuple[L7Redirect, rbac_pb2.Permission | None]]:
        original_dst = self.options.use_original_dst
        distinct = len({r.proxy_port for r in group}) == len(group)
        if len(group) == 1 or not (original_dst or distinct):
            return [(r, None) for r in group]
        result = []
        for redirect in group:
            service = model.services.get(redirect.service)
            ips = service.cluster_ips if service is not None else ()
            destination = destination_of(redirect.proxy_port, redirect.port, ips, original_dst)
            result.append((redirect, destination))
        return result

    def _rbac(self, model: MeshModel, group: list[L7Redirect], stage: RedirectStage) -> _Rbac:
        """The group's RBAC filter. A lone redirect's depends on its policies only,
        so services sharing one network policy share one filter message."""
        key: tuple[object, ...] | None = None
        if len(group) == 1:
            key = (group[0].policies, group[0].origin)
            known = stage.rbac_memo.get(key) or self.previous.rbac_memo.get(key)
            if known is not None:
                stage.rbac_memo[key] = known
                return known
        notes: Notes = []
        destinations = self._destinations(model, group)
        http_filter = rbac_filter(destinations, notes)
        if http_filter is not None and len(group) > 1 and destinations[0][1] is None:
            notes.extend(_merged_policies(group))
        made = _Rbac(http_filter, tuple(notes))
        if key is not None:
            stage.rbac_memo[key] = made
        return made

    def _listener(
        self,
        model: MeshModel,
        cec: Mapping[str, Mapping[str, Message]],
        name: str,
        route: str,
        group: list[L7Redirect],
        stage: RedirectStage,
    ) -> _Built:
        own = cec[registry.LISTENER].get(name)
        vips: tuple[object, ...] = ()
        if len(group) > 1 and self.options.use_original_dst:
            # Shared listeners tell redirects apart by VIP: those are inputs too.
            vips = tuple(model.services.get(r.service) for r in group)
        key: tuple[object, ...] = (
            tuple(group),
            route,
            own,
            vips,
            _consumer_scopes(model, group[0]),
        )
        built = self.previous.listener_memo.get(name)
        if built is None or built.key != key:
            rbac = self._rbac(model, group, stage)
            ports = sorted({r.proxy_port for r in group})
            if own is None:
                listener = self._http.build(name, route, ports[0], rbac.http_filter)
            else:
                listener = listener_pb2.Listener()
                listener.CopyFrom(own)
                if rbac.http_filter is not None:
                    with_rbac(listener, rbac.http_filter)
            gateway = group[0].origin is RedirectOrigin.GATEWAY_ROUTE
            if gateway:
                add_consumer_chains(listener, _consumer_scopes(model, group[0]))
            if self.options.access_log_socket is not None and (own is not None or gateway):
                # Every chain, the CEC's and the consumers' too (idempotent).
                with_access_log(listener)
            if own is not None or len(ports) > 1:
                # A CEC's listener (and a shared one) is bound here, to every port.
                bind(listener, self.options.listener_address, ports, self.options.use_original_dst)
            built = _Built(key, listener, rbac.notes)
        stage.listener_memo[name] = built
        return built


def _consumer_scopes(
    model: MeshModel, redirect: L7Redirect
) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(namespace, route config, pod addresses) of each consumer scope."""
    if redirect.origin is not RedirectOrigin.GATEWAY_ROUTE:
        return ()
    table = model.gamma.tables.get((redirect.service, redirect.port))
    if table is None:
        return ()
    return tuple(
        (ns, consumer_route_name(redirect.route_config, ns), consumer_ips(model, ns))
        for ns, _ in table.consumers
    )


def _services_of(entries: Sequence[RouteEntry]) -> set[ServiceName]:
    found = set()
    for entry in entries:
        for backend in (*entry.rule.backends, *entry.rule.mirrors):
            if backend.service is not None:
                found.add(backend.service)
    return found


def _merged_policies(group: Sequence[L7Redirect]) -> list[ObjectWarning]:
    """Redirects sharing one proxy port, without original destinations: Envoy
    cannot tell their connections apart, so their policies apply together."""
    services = ", ".join(f"{r.service}:{r.port}" for r in group)
    owners = sorted({p.owner for r in group for p in r.policies})
    return [
        ObjectWarning(
            owner,
            "spec.egress",
            f"listener {group[0].listener!r} serves {services} on one proxy port; without "
            "original destinations Envoy cannot tell them apart, so the HTTP rules of all "
            "of them apply to each",
        )
        for owner in owners
    ]
