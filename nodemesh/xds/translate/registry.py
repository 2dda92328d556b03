"""The Envoy resource types nodemesh serves, and protobuf plumbing around them.

Type URLs are the keys of Translation.resources. User resources may embed
other Envoy messages in `Any` fields ("typed_config"); protobuf's JSON parser
only knows types whose generated module was imported, so `ensure_types`
imports, on demand, the xds-protos package a type URL names (the package path
is the module path: envoy.extensions.filters.http.router.v3 lives in
envoy/extensions/filters/http/router/v3/).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any as AnyValue

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from nodemesh.xds.translate.errors import UnknownTypeError

# Re-exported: older callers and tests name the types through this module.
from nodemesh.xds.vocab import CLUSTER as CLUSTER
from nodemesh.xds.vocab import ENDPOINT as ENDPOINT
from nodemesh.xds.vocab import LISTENER as LISTENER
from nodemesh.xds.vocab import ROUTE as ROUTE
from nodemesh.xds.vocab import TYPE_PREFIX as TYPE_PREFIX

# Ordered as Envoy must receive them (make-before-break): CDS, EDS, LDS, RDS.
RESOURCE_TYPES: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
}

# Roots whose generated modules xds-protos installs; other names are never imported.
_IMPORTABLE_ROOTS = ("envoy.", "xds.", "udpa.", "validate.")
_imported_packages: set[str] = set()


def message_class(type_url: str, field: str) -> type[Message]:
    """The message class of a top-level resource type URL."""
    try:
        return RESOURCE_TYPES[type_url]
    except KeyError:
        supported = ", ".join(sorted(RESOURCE_TYPES))
        raise UnknownTypeError(
            field, f"unsupported @type {type_url!r} (supported: {supported})"
        ) from None


def resource_name(message: Message) -> str:
    """The xDS name of a resource: ClusterLoadAssignment names itself differently."""
    if isinstance(message, endpoint_pb2.ClusterLoadAssignment):
        return str(message.cluster_name)
    return str(getattr(message, "name", ""))


def _known(full_name: str) -> bool:
    try:
        descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        return False
    return True


def _import_package(package: str) -> bool:
    if package in _imported_packages:
        return True
    try:
        module = importlib.import_module(package)
    except ImportError:
        return False
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")
    _imported_packages.add(package)
    return True


def ensure_type(type_url: str, field: str) -> None:
    """Make the message type a type URL names known to protobuf, or raise."""
    full_name = type_url.rpartition("/")[2]
    if _known(full_name):
        return
    if full_name.startswith(_IMPORTABLE_ROOTS):
        parts = full_name.split(".")
        # Nested messages (Outer.Inner) sit below their package: try shorter prefixes.
        for cut in range(len(parts) - 1, 0, -1):
            if _import_package(".".join(parts[:cut])) and _known(full_name):
                return
    raise UnknownTypeError(field, f"unknown @type {type_url!r}")


def _type_urls(value: AnyValue, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "@type":
                where = f"{path}.@type" if path else "@type"
                if not isinstance(item, str):
                    raise UnknownTypeError(where, f"@type must be a type URL string, not {item!r}")
                yield item, where
            else:
                yield from _type_urls(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _type_urls(item, f"{path}[{index}]")


def ensure_embedded_types(body: AnyValue) -> None:
    """Import every type an "@type" inside a resource body names, or raise."""
    for type_url, field in _type_urls(body, ""):
        ensure_type(type_url, field)


def pack(message: Message) -> any_pb2.Any:
    """An Any holding `message`, serialized deterministically (stable bytes)."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


def unpack(packed: any_pb2.Any) -> Message:
    """The message inside an Any, as an instance of its generated class."""
    full_name = packed.TypeName()
    ensure_type(packed.type_url, "typed_config.@type")
    descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    message = message_factory.GetMessageClass(descriptor)()
    packed.Unpack(message)
    return message


def encode(message: Message) -> bytes:
    """Deterministic wire bytes: the same resource always encodes the same."""
    return message.SerializeToString(deterministic=True)
