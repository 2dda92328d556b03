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

from collections.abc import Sequence
from dataclasses import dataclass, field

from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from google.protobuf.message import Message

from nodemesh.model.objects import L7Redirect, ObjectError, ObjectWarning, RedirectOrigin
from nodemesh.model.snapshot import MeshModel
from nodemesh.xds.translate import registry
from nodemesh.xds.translate.listeners import (
    bind,
    destination_of,
    http_listener,
    service_route,
    with_rbac,
)
from nodemesh.xds.translate.rbac import rbac_filter
from nodemesh.xds.translate.result import ServiceCluster, TranslateOptions
from nodemesh.xds.translate.services import cluster_name


@dataclass
class Found:
    errors: list[ObjectError] = field(default_factory=list)
    warnings: list[ObjectWarning] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Built:
    key: tuple[object, ...]
    message: Message
    warnings: tuple[ObjectWarning, ...]


class RedirectBuilder:
    """Listeners for redirects, memoized by their inputs across models."""

    def __init__(self, options: TranslateOptions) -> None:
        self.options = options
        self._listeners: dict[str, _Built] = {}
        self._routes: dict[str, _Built] = {}

    def build(
        self,
        model: MeshModel,
        out: dict[str, dict[str, Message]],
        needed: dict[str, ServiceCluster],
    ) -> Found:
        """Add every redirect's listener (and route) to `out`, and the service
        clusters they route to to `needed`."""
        groups: dict[str, list[L7Redirect]] = {}
        for redirect in model.redirects:
            groups.setdefault(redirect.listener, []).append(redirect)
        found = Found()
        listeners: dict[str, _Built] = {}
        routes: dict[str, _Built] = {}
        ports: dict[int, str] = {}
        for name in sorted(groups):
            group = groups[name]
            if self._port_clash(name, group, ports, found):
                continue
            route = self._route(model, out, group, needed, routes, found)
            if route is None:
                continue
            built = self._listener(model, out, name, route, group, listeners)
            out[registry.LISTENER][name] = built.message
            found.warnings.extend(built.warnings)
        self._listeners, self._routes = listeners, routes
        return found

    def _port_clash(
        self, name: str, group: list[L7Redirect], ports: dict[int, str], found: Found
    ) -> bool:
        for redirect in group:
            other = ports.setdefault(redirect.proxy_port, name)
            if other != name:
                for owner in redirect.owners:
                    found.errors.append(
                        ObjectError(
                            owner,
                            "spec",
                            f"proxy port {redirect.proxy_port} of {redirect.service}:"
                            f"{redirect.port} is already the port of listener {other!r}",
                        )
                    )
                return True
        return False

    def _route(
        self,
        model: MeshModel,
        out: dict[str, dict[str, Message]],
        group: list[L7Redirect],
        needed: dict[str, ServiceCluster],
        routes: dict[str, _Built],
        found: Found,
    ) -> str | None:
        """The route config the group's listener serves, synthesized when needed."""
        first = group[0]
        name = first.route_config or first.listener
        if first.origin is RedirectOrigin.ENVOY_CONFIG and (
            name in out[registry.ROUTE] or name in out[registry.LISTENER]
        ):
            return name
        service = model.services.get(first.service)
        if service is None:
            found.errors.extend(
                ObjectError(o, "spec", f"redirected Service {first.service} does not exist")
                for o in first.owners
            )
            return None
        if first.origin is RedirectOrigin.ENVOY_CONFIG:
            found.errors.append(
                ObjectError(
                    first.owners[0],
                    "spec.resources",
                    f"no RouteConfiguration {name!r} to serve {first.service}:{first.port}; "
                    "its requests go to the Service itself",
                )
            )
        cluster = cluster_name(service, first.port)
        needed.setdefault(cluster, ServiceCluster(cluster, first.service, first.port))
        key: tuple[object, ...] = (cluster,)
        built = self._routes.get(name)
        if built is None or built.key != key:
            built = _Built(key, service_route(name, cluster), ())
        routes[name] = built
        out[registry.ROUTE][name] = built.message
        return name

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

    def _listener(
        self,
        model: MeshModel,
        out: dict[str, dict[str, Message]],
        name: str,
        route: str,
        group: list[L7Redirect],
        listeners: dict[str, _Built],
    ) -> _Built:
        own = out[registry.LISTENER].get(name)
        key: tuple[object, ...] = (tuple(group), route, own)
        built = self._listeners.get(name)
        if built is not None and (built.key == key):
            listeners[name] = built
            return built
        warnings: list[ObjectWarning] = []
        rbac = rbac_filter(self._destinations(model, group), warnings)
        if own is not None:
            listener = listener_pb2.Listener()
            listener.CopyFrom(own)
            if rbac is not None:
                with_rbac(listener, rbac)
        else:
            listener = http_listener(name, route, self.options.stat_prefix, rbac)
        ports = sorted({r.proxy_port for r in group})
        bind(listener, self.options.listener_address, ports, self.options.use_original_dst)
        built = _Built(key, listener, tuple(warnings))
        listeners[name] = built
        return built
