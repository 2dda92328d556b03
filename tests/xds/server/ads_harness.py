"""Test harness: a real grpc.aio ADS server on an ephemeral port, real gRPC
client streams, and small builders for Envoy resources."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from nodemesh.xds.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, SnapshotCache
from tests.support.polling import NOT_YET, wait_until_async

TIMEOUT = 20.0  # generous: the machine is shared and loaded


# -- resource builders --------------------------------------------------------


def cluster(
    name: str, eds: bool = True, timeout_s: int = 1, wait_for_eds: bool = False
) -> cluster_pb2.Cluster:
    """An EDS cluster over ADS. `wait_for_eds`: initial_fetch_timeout 0, so
    Envoy keeps the cluster warming until its endpoints arrive, however long."""
    c = cluster_pb2.Cluster(name=name, connect_timeout=duration_pb2.Duration(seconds=timeout_s))
    if eds:
        c.type = cluster_pb2.Cluster.EDS
        c.eds_cluster_config.eds_config.ads.SetInParent()
        c.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
        if wait_for_eds:
            c.eds_cluster_config.eds_config.initial_fetch_timeout.SetInParent()
    return c


def endpoints(
    name: str, *ports: int, host: str = "127.0.0.1"
) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = cla.endpoints.add()
    for port in ports:
        lb = endpoint_components_pb2.LbEndpoint()
        lb.endpoint.address.socket_address.address = host
        lb.endpoint.address.socket_address.port_value = port
        group.lb_endpoints.append(lb)
    return cla


def route(name: str, weights: Mapping[str, int]) -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(name=name)
    vhost = rc.virtual_hosts.add(name="all", domains=["*"])
    r = vhost.routes.add()
    r.match.prefix = "/"
    if len(weights) == 1:
        r.route.cluster = next(iter(weights))
    else:
        for cname, weight in weights.items():
            r.route.weighted_clusters.clusters.add(
                name=cname, weight=wrappers_pb2.UInt32Value(value=weight)
            )
    return rc


def listener(name: str, port: int, route_name: str) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = route_name
    hcm.rds.config_source.ads.SetInParent()
    hcm.rds.config_source.resource_api_version = config_source_pb2.V3
    router = hcm.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())
    lst = listener_pb2.Listener(name=name)
    lst.address.CopyFrom(
        address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
        )
    )
    chain = listener_components_pb2.FilterChain()
    flt = chain.filters.add(name="envoy.filters.network.http_connection_manager")
    packed = any_pb2.Any()
    packed.Pack(hcm)
    flt.typed_config.CopyFrom(packed)
    lst.filter_chains.append(chain)
    return lst


def mesh(
    clusters: Sequence[str] = ("a", "b"),
    weights: Mapping[str, int] | None = None,
    port: int = 10000,
) -> dict[str, dict[str, Message]]:
    """A small consistent mesh: clusters + endpoints + one listener + route."""
    weights = weights or {clusters[0]: 100}
    return {
        CLUSTER: {c: cluster(c) for c in clusters},
        ENDPOINT: {c: endpoints(c, 8000 + i) for i, c in enumerate(clusters)},
        LISTENER: {"http": listener("http", port, "routes")},
        ROUTE: {"routes": route("routes", weights)},
    }


def publish(
    cache: SnapshotCache, key: str, resources: Mapping[str, Mapping[str, Message]], label: str = "v"
) -> None:
    cache.set_snapshot(key, cache.build_snapshot(resources, label, key))


# -- clients ------------------------------------------------------------------


def node(node_id: str = "node-1", cluster_name: str = "test") -> base_pb2.Node:
    return base_pb2.Node(id=node_id, cluster=cluster_name)


class StreamClosed(Exception):
    """The server ended the stream; `.error` holds the gRPC error if any."""

    def __init__(self, error: grpc.aio.AioRpcError | None) -> None:
        super().__init__(repr(error))
        self.error = error


class _Client:
    """A real ADS client stream; responses are read by a background task."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str) -> None:
        self.channel = channel
        self.node = node(node_id)
        self.call: Any = None
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.error: grpc.aio.AioRpcError | None = None
        self._sent_node = False
        self._reader: asyncio.Task[None] | None = None

    def _start(self, call: Any) -> None:
        self.call = call
        self._reader = asyncio.create_task(self._read(), name="test-ads-reader")

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    break
                self.queue.put_nowait(msg)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.queue.put_nowait(None)

    def _with_node(self, request: Any) -> Any:
        if not self._sent_node:
            request.node.CopyFrom(self.node)
            self._sent_node = True
        return request

    async def recv(self, timeout: float = TIMEOUT) -> Any:
        msg = await asyncio.wait_for(self.queue.get(), timeout)
        if msg is None:
            self.queue.put_nowait(None)
            raise StreamClosed(self.error)
        return msg

    async def closed(self, timeout: float = TIMEOUT) -> grpc.aio.AioRpcError | None:
        """Wait for the server to end the stream; returns the error (None = OK)."""
        while True:
            msg = await asyncio.wait_for(self.queue.get(), timeout)
            if msg is None:
                self.queue.put_nowait(None)
                return self.error

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class SotwClient(_Client):
    async def open(self) -> SotwClient:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self._start(stub.StreamAggregatedResources())
        return self

    async def request(
        self,
        type_url: str,
        names: Sequence[str] = (),
        version: str = "",
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=list(names),
            version_info=version,
            response_nonce=nonce,
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(self._with_node(req))

    async def ack(self, resp: discovery_pb2.DiscoveryResponse, names: Sequence[str] = ()) -> None:
        await self.request(resp.type_url, names, version=resp.version_info, nonce=resp.nonce)

    async def nack(
        self,
        resp: discovery_pb2.DiscoveryResponse,
        previous_version: str,
        error: str,
        names: Sequence[str] = (),
    ) -> None:
        await self.request(resp.type_url, names, previous_version, resp.nonce, error)


class DeltaClient(_Client):
    async def open(self) -> DeltaClient:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self._start(stub.DeltaAggregatedResources())
        return self

    async def request(
        self,
        type_url: str,
        subscribe: Sequence[str] = (),
        unsubscribe: Sequence[str] = (),
        nonce: str = "",
        error: str | None = None,
        initial: Mapping[str, str] | None = None,
    ) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=dict(initial or {}),
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(self._with_node(req))

    async def ack(
        self, resp: discovery_pb2.DeltaDiscoveryResponse, names: Sequence[str] = ()
    ) -> None:
        """ACK; `names` is accepted for symmetry with SotW and ignored (delta
        subscriptions change only through subscribe/unsubscribe)."""
        await self.request(resp.type_url, nonce=resp.nonce)

    async def nack(self, resp: discovery_pb2.DeltaDiscoveryResponse, error: str) -> None:
        await self.request(resp.type_url, nonce=resp.nonce, error=error)


def names_of(resp: Any) -> list[str]:
    """Resource names in a SotW or delta response."""
    if isinstance(resp, discovery_pb2.DeltaDiscoveryResponse):
        return sorted(r.name for r in resp.resources)
    out = []
    for packed in resp.resources:
        out.append(
            _decode(packed).name if packed.type_url != ENDPOINT else _decode(packed).cluster_name
        )
    return sorted(out)


def _decode(packed: any_pb2.Any) -> Any:
    classes = {
        CLUSTER: cluster_pb2.Cluster,
        ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
        LISTENER: listener_pb2.Listener,
        ROUTE: route_pb2.RouteConfiguration,
    }
    msg = classes[packed.type_url]()
    packed.Unpack(msg)
    return msg


def decode_resources(resp: Any) -> dict[str, Any]:
    """name -> decoded message for a SotW or delta response."""
    if isinstance(resp, discovery_pb2.DeltaDiscoveryResponse):
        return {r.name: _decode(r.resource) for r in resp.resources}
    out = {}
    for packed in resp.resources:
        msg = _decode(packed)
        out[msg.cluster_name if packed.type_url == ENDPOINT else msg.name] = msg
    return out


@dataclass
class Harness:
    cache: SnapshotCache
    server: Any  # AdsServer
    channel: grpc.aio.Channel
    registry: Any  # prometheus-client's default registry (module-level metrics)
    start: dict[tuple[str, frozenset[tuple[str, str]]], float]

    async def sotw(self, node_id: str = "node-1") -> SotwClient:
        return await SotwClient(self.channel, node_id).open()

    async def delta(self, node_id: str = "node-1") -> DeltaClient:
        return await DeltaClient(self.channel, node_id).open()

    async def client(self, api: str, node_id: str = "node-1") -> Any:
        return await (self.sotw(node_id) if api == "sotw" else self.delta(node_id))

    def metric(self, name: str, **labels: str) -> float:
        """The sample's change since this harness started (metrics are
        process-wide: earlier tests' servers counted into them too)."""
        value = self.registry.get_sample_value(name, labels)
        before = self.start.get((name, frozenset(labels.items())), 0.0)
        return (0.0 if value is None else float(value)) - before


def baseline(registry: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every nodemesh_xds_* sample now, for `Harness.metric`."""
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.startswith("nodemesh_xds_"):
                out[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return out


async def settle(harness: Harness, client: Any, types: int, eds: Sequence[str] = ()) -> None:
    """ACK every response until the one stream has answered `types` types and
    nothing is pending (robust against responses still being built)."""

    def settled() -> bool:
        clients = harness.server.clients()
        if len(clients) != 1 or len(clients[0].types) < types:
            return False
        states = clients[0].types.values()
        return all(t.last_sent_nonce and not t.pending for t in states)

    while not settled():
        try:
            resp = await client.recv(timeout=0.5)
        except TimeoutError:
            continue  # an ACK or a response still on its way: look again
        names: Sequence[str] = ()
        if resp.type_url == ENDPOINT:
            names = eds
        elif resp.type_url == ROUTE:
            names = ["routes"]
        await client.ack(resp, names)


# Starts a real server with StreamSettings overrides (the make_harness fixture).
MakeHarness = Callable[..., Awaitable[Harness]]


# The server tests poll with the shared helper, this harness's timeout, and
# "not there yet" (a missing stream, type or list index) retried.
wait_until = functools.partial(wait_until_async, timeout=TIMEOUT, retry_on=NOT_YET)
