"""The translator's access log: every redirect listener streams to the agent's
ALS socket when one is configured, and nothing changes when none is."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import Message

from nodemesh.cmd.demo.run import EXAMPLES
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource
from nodemesh.xds.translate import CLUSTER, LISTENER, TranslateOptions, translate
from nodemesh.xds.translate.access_log import ALS_CLUSTER, with_access_log
from nodemesh.xds.translate.registry import unpack


def _canary() -> MeshModel:
    store = MeshStore()
    FileSource(EXAMPLES, store).load()
    return store.build()


def _managers(listener: Message) -> list[hcm_pb2.HttpConnectionManager]:
    managers = []
    assert isinstance(listener, listener_pb2.Listener)
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            manager = unpack(network_filter.typed_config)
            assert isinstance(manager, hcm_pb2.HttpConnectionManager)
            managers.append(manager)
    return managers


def test_redirect_listeners_log_to_the_als_cluster_on_the_socket() -> None:
    result = translate(_canary(), TranslateOptions(access_log_socket="/run/nm/als.sock"))
    cluster = result.resources[CLUSTER][ALS_CLUSTER]
    assert isinstance(cluster, cluster_pb2.Cluster)
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert address.pipe.path == "/run/nm/als.sock"
    listeners = list(result.resources[LISTENER].values())
    assert listeners
    for listener in listeners:
        for manager in _managers(listener):
            (log,) = manager.access_log
            config = unpack(log.typed_config)
            assert isinstance(config, als_pb2.HttpGrpcAccessLogConfig)
            assert config.common_config.grpc_service.envoy_grpc.cluster_name == ALS_CLUSTER


def test_without_a_socket_there_is_no_access_log_and_no_cluster() -> None:
    result = translate(_canary(), TranslateOptions())
    assert ALS_CLUSTER not in result.resources[CLUSTER]
    for listener in result.resources[LISTENER].values():
        assert all(not m.access_log for m in _managers(listener))


def test_a_listener_given_the_log_twice_carries_it_once() -> None:
    result = translate(_canary(), TranslateOptions(access_log_socket="/s"))
    listener = next(iter(result.resources[LISTENER].values()))
    assert isinstance(listener, listener_pb2.Listener)
    with_access_log(listener)
    assert [len(m.access_log) for m in _managers(listener)] == [1]
