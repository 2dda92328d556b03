"""Node-local Envoy listeners for L7 redirects, and the routes nodemesh writes itself.

A redirected service port's connections arrive at `listener_address:proxy_port`.
The listener is either one a CEC defines (nodemesh binds it to the proxy
port, as Cilium does) or one nodemesh synthesizes: an HTTP connection manager
getting its RouteConfiguration over ADS (RDS), with the RBAC filter when
network policies apply, then the router.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from nodemesh.xds.translate import access_log
from nodemesh.xds.translate.references import HCM_TYPE, edit_http_managers
from nodemesh.xds.translate.registry import pack

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
ORIGINAL_DST_FILTER = "envoy.filters.listener.original_dst"

_ROUTER = hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))
_ORIGINAL_DST = listener_components_pb2.ListenerFilter(
    name=ORIGINAL_DST_FILTER, typed_config=pack(original_dst_pb2.OriginalDst())
)
_UNSAFE_STAT = re.compile(r"[^A-Za-z0-9_-]+")


def stat_name(prefix: str, name: str) -> str:
    """A stat prefix from a resource name: dots would split Envoy's stat tree."""
    return f"{prefix}_{_UNSAFE_STAT.sub('_', name)}".strip("_")


def bind(
    listener: listener_pb2.Listener, address: str, ports: Sequence[int], original_dst: bool
) -> None:
    """Bind a listener to every proxy port of its redirects (in place)."""
    first, *others = ports
    listener.ClearField("address")
    listener.ClearField("additional_addresses")
    socket = listener.address.socket_address
    socket.address = address
    socket.port_value = first
    for port in others:
        extra = listener.additional_addresses.add()
        extra.address.socket_address.address = address
        extra.address.socket_address.port_value = port
    if original_dst and not any(f.name == ORIGINAL_DST_FILTER for f in listener.listener_filters):
        listener.listener_filters.append(_ORIGINAL_DST)


class HttpListeners:
    """Synthesized HTTP listeners (unbound: see `bind`).

    Thousands of them differ only in name, route and stat prefix, so each is
    copied from a prototype connection manager per RBAC filter (the filters
    are shared between redirects with the same policies) and packed once.
    """

    def __init__(
        self, stat_prefix: str, address: str, original_dst: bool, log_access: bool = False
    ) -> None:
        self.stat_prefix = stat_prefix
        self.log_access = log_access
        self._prototypes: dict[int, tuple[object, hcm_pb2.HttpConnectionManager]] = {}
        # Everything but name, port and the connection manager's bytes.
        self._listener = listener_pb2.Listener()
        bind(self._listener, address, [0], original_dst)
        network_filter = self._listener.filter_chains.add().filters.add()
        network_filter.name = HCM_FILTER
        network_filter.typed_config.type_url = HCM_TYPE

    def _prototype(self, rbac: hcm_pb2.HttpFilter | None) -> hcm_pb2.HttpConnectionManager:
        known = self._prototypes.get(id(rbac))
        if known is not None and known[0] is rbac:
            return known[1]
        manager = hcm_pb2.HttpConnectionManager(
            # "httpbin" and "httpbin:80" are the same virtual host to a client.
            strip_any_host_port=True,
            # Policies match paths: "/public/../admin" must be seen as "/admin".
            merge_slashes=True,
        )
        manager.normalize_path.value = True
        manager.rds.config_source.ads.SetInParent()
        manager.rds.config_source.resource_api_version = config_source_pb2.V3
        if rbac is not None:
            manager.http_filters.append(rbac)
        manager.http_filters.append(_ROUTER)
        if self.log_access:
            access_log.add_to_manager(manager)
        if len(self._prototypes) > 1024:
            self._prototypes.clear()  # bounded: filters of models long gone
        self._prototypes[id(rbac)] = (rbac, manager)
        return manager

    def build(
        self, name: str, route_config: str, port: int, rbac: hcm_pb2.HttpFilter | None
    ) -> listener_pb2.Listener:
        """An HTTP listener on `port` serving `route_config` over RDS."""
        manager = hcm_pb2.HttpConnectionManager()
        manager.CopyFrom(self._prototype(rbac))
        manager.stat_prefix = stat_name(self.stat_prefix, name)
        manager.rds.route_config_name = route_config
        listener = listener_pb2.Listener()
        listener.CopyFrom(self._listener)
        listener.name = name
        listener.address.socket_address.port_value = port
        typed_config = listener.filter_chains[0].filters[0].typed_config
        typed_config.value = manager.SerializeToString(deterministic=True)
        return listener


def with_rbac(listener: listener_pb2.Listener, rbac: hcm_pb2.HttpFilter) -> None:
    """Put the RBAC filter first in every HTTP connection manager (in place).

    The policies are nodemesh's to enforce, so paths are normalized for them
    unless the CEC's author chose otherwise for normalize_path."""

    def rbac_first(manager: hcm_pb2.HttpConnectionManager) -> None:
        # An empty list means Envoy's default router: keep it behind the RBAC filter.
        filters = [rbac, *(manager.http_filters or [_ROUTER])]
        manager.ClearField("http_filters")
        manager.http_filters.extend(filters)
        if not manager.HasField("normalize_path"):
            manager.normalize_path.value = True
            manager.merge_slashes = True

    edit_http_managers(listener, rbac_first)


def _route_prototype() -> route_pb2.RouteConfiguration:
    route = route_pb2.RouteConfiguration()
    host = route.virtual_hosts.add()
    host.domains.append("*")
    host.routes.add().match.prefix = "/"
    return route


_ROUTE = _route_prototype()


def service_route(name: str, cluster: str) -> route_pb2.RouteConfiguration:
    """A RouteConfiguration sending every request to one cluster (CNP-only redirects:
    the policy inspects, the destination stays the Service)."""
    route = route_pb2.RouteConfiguration()
    route.CopyFrom(_ROUTE)
    route.name = name
    host = route.virtual_hosts[0]
    host.name = name
    host.routes[0].route.cluster = cluster
    return route


def destination_of(
    proxy_port: int, service_port: int, service_ips: Sequence[str], original_dst: bool
) -> rbac_pb2.Permission:
    """The RBAC condition that singles out one redirect's connections on a shared
    listener: its proxy port, or with original destinations restored, the
    Service's VIPs and port."""
    if not original_dst:
        return rbac_pb2.Permission(destination_port=proxy_port)
    port = rbac_pb2.Permission(destination_port=service_port)
    ips = [
        rbac_pb2.Permission(
            destination_ip=address_pb2.CidrRange(
                address_prefix=ip, prefix_len={"value": 128 if ":" in ip else 32}
            )
        )
        for ip in service_ips
    ]
    if not ips:
        return port
    vips = rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=ips))
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=[vips, port]))
