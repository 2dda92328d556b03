"""Where Envoy resources name each other, and rewriting those names in place.

A CiliumEnvoyConfig's resources refer to each other by the short names the
user wrote; nodemesh serves them under qualified names, so every reference is
rewritten with them. One walker serves collection (a mapper that records and
returns the name unchanged) and rewriting (a mapper that returns the new one).

Mappers get (name, field) where `field` is the dotted path of the reference
inside the resource, so whoever rejects a name can say exactly where it is.
"""

from __future__ import annotations

from collections.abc import Callable

from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from nodemesh.xds.translate.registry import TYPE_PREFIX, pack, unpack

Mapper = Callable[[str, str], str]

HCM_TYPE = TYPE_PREFIX + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
TCP_PROXY_TYPE = TYPE_PREFIX + tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name


def _map_action(action: route_components_pb2.RouteAction, path: str, clusters: Mapper) -> None:
    if action.cluster:
        action.cluster = clusters(action.cluster, f"{path}.cluster")
    for index, weighted in enumerate(action.weighted_clusters.clusters):
        if weighted.name:
            weighted.name = clusters(
                weighted.name, f"{path}.weighted_clusters.clusters[{index}].name"
            )
    for index, mirror in enumerate(action.request_mirror_policies):
        if mirror.cluster:
            mirror.cluster = clusters(mirror.cluster, f"{path}.request_mirror_policies[{index}]")


def map_route_clusters(route: route_pb2.RouteConfiguration, path: str, clusters: Mapper) -> None:
    """Apply `clusters` to every cluster name a RouteConfiguration routes to."""
    for index, mirror in enumerate(route.request_mirror_policies):
        if mirror.cluster:
            mirror.cluster = clusters(mirror.cluster, f"{path}.request_mirror_policies[{index}]")
    for v, vhost in enumerate(route.virtual_hosts):
        vpath = f"{path}.virtual_hosts[{v}]" if path else f"virtual_hosts[{v}]"
        for index, mirror in enumerate(vhost.request_mirror_policies):
            if mirror.cluster:
                mirror.cluster = clusters(
                    mirror.cluster, f"{vpath}.request_mirror_policies[{index}]"
                )
        for r, entry in enumerate(vhost.routes):
            if entry.HasField("route"):
                _map_action(entry.route, f"{vpath}.routes[{r}].route", clusters)


def _map_hcm(
    manager: hcm_pb2.HttpConnectionManager, path: str, clusters: Mapper, routes: Mapper
) -> None:
    if manager.HasField("rds"):
        source = manager.rds.config_source
        if source.WhichOneof("config_source_specifier") is None:
            # As in Cilium: RDS without a config source comes over the same ADS stream.
            source.ads.SetInParent()
            source.resource_api_version = config_source_pb2.V3
        manager.rds.route_config_name = routes(
            manager.rds.route_config_name, f"{path}.rds.route_config_name"
        )
    if manager.HasField("route_config"):
        map_route_clusters(manager.route_config, f"{path}.route_config", clusters)


def _map_tcp_proxy(proxy: tcp_proxy_pb2.TcpProxy, path: str, clusters: Mapper) -> None:
    if proxy.cluster:
        proxy.cluster = clusters(proxy.cluster, f"{path}.cluster")
    for index, weighted in enumerate(proxy.weighted_clusters.clusters):
        weighted.name = clusters(weighted.name, f"{path}.weighted_clusters.clusters[{index}].name")


def _map_chain(
    chain: listener_components_pb2.FilterChain, path: str, clusters: Mapper, routes: Mapper
) -> None:
    for index, network_filter in enumerate(chain.filters):
        config = network_filter.typed_config
        fpath = f"{path}.filters[{index}].typed_config"
        if config.type_url == HCM_TYPE:
            manager = unpack(config)
            assert isinstance(manager, hcm_pb2.HttpConnectionManager)
            _map_hcm(manager, fpath, clusters, routes)
            config.CopyFrom(pack(manager))
        elif config.type_url == TCP_PROXY_TYPE:
            proxy = unpack(config)
            assert isinstance(proxy, tcp_proxy_pb2.TcpProxy)
            _map_tcp_proxy(proxy, fpath, clusters)
            config.CopyFrom(pack(proxy))


def map_listener(
    listener: listener_pb2.Listener, path: str, clusters: Mapper, routes: Mapper
) -> None:
    """Apply `clusters` to every cluster name and `routes` to every RDS route name
    the listener's HTTP connection managers and TCP proxies use."""
    prefix = f"{path}." if path else ""
    for index, chain in enumerate(listener.filter_chains):
        _map_chain(chain, f"{prefix}filter_chains[{index}]", clusters, routes)
    if listener.HasField("default_filter_chain"):
        _map_chain(listener.default_filter_chain, f"{prefix}default_filter_chain", clusters, routes)


def keep(name: str, field: str) -> str:
    """A mapper that changes nothing."""
    return name


def collect(into: list[tuple[str, str]]) -> Mapper:
    """A mapper that records every (name, field) it sees and changes nothing."""

    def record(name: str, field: str) -> str:
        into.append((name, field))
        return name

    return record


def edit_http_managers(
    listener: listener_pb2.Listener,
    edit: Callable[[hcm_pb2.HttpConnectionManager], None],
) -> None:
    """Apply `edit` to every HTTP connection manager of `listener`, in place
    (its filter chains and default chain); other network filters are left."""
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            if network_filter.typed_config.type_url != HCM_TYPE:
                continue
            manager = unpack(network_filter.typed_config)
            assert isinstance(manager, hcm_pb2.HttpConnectionManager)
            edit(manager)
            network_filter.typed_config.CopyFrom(pack(manager))
