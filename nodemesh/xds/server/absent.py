"""A Listener that tells a gRPC client its target does not exist.

The xDS protocol's SotW answer to "does this Listener exist" is a full-state
LDS response without it, and nodemesh sends that at once. gRPC's xDS clients
ignore it for a name they never received: grpc-core (xds_client.cc) and
grpc-go (xdsclient authority.go) both skip "newly requested but not yet
received" names, because the response might answer an earlier request, and
wait out their 15 s does-not-exist timer instead. Every call to a mistyped
target would hang for 15 s.

So a named SotW LDS subscription to a name the snapshot lacks also gets this
stand-in: an `api_listener` whose inline RouteConfiguration has no virtual
host, named so the reason shows. A gRPC client fails its calls at once with
UNAVAILABLE ("could not find VirtualHost ..." / "no matching virtual host");
when the name appears, the real Listener replaces it in the next push. Envoy
never sees one: its LDS subscription is a wildcard. Delta streams get the
protocol's own answer (`removed_resources`), which gRPC would honour.
"""

from __future__ import annotations

from collections import OrderedDict

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2

from nodemesh.xds.cache import LISTENER, EncodedResource

_MAX_REMEMBERED = 4096
_made: OrderedDict[str, EncodedResource] = OrderedDict()


def route_config_name(name: str) -> str:
    """What the stand-in's (empty) RouteConfiguration is called: the reason."""
    return f"nodemesh: no Service port is named {name!r} (want <svc>.<ns>.svc.<domain>:<port>)"


def absent_listener(name: str) -> EncodedResource:
    """The stand-in Listener for `name`, encoded once (bounded memo)."""
    made = _made.get(name)
    if made is not None:
        _made.move_to_end(name)
        return made
    manager = hcm_pb2.HttpConnectionManager(stat_prefix="nodemesh_absent")
    manager.route_config.name = route_config_name(name)
    router = manager.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())
    packed = any_pb2.Any()
    packed.Pack(manager, deterministic=True)
    listener = listener_pb2.Listener(name=name)
    listener.api_listener.api_listener.CopyFrom(packed)
    made = _made[name] = EncodedResource(LISTENER, name, listener)
    while len(_made) > _MAX_REMEMBERED:
        _made.popitem(last=False)
    return made
