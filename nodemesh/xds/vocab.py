"""The xDS vocabulary, defined once: type URLs, their short names, the
aliases operators type (`clusters` for CDS), and the server's defaults.

Every other module of nodemesh (translator, cache, server, wiring, commands)
takes these from here. It imports nothing of nodemesh, so any layer from
`nodemesh.xds` up may use it; `nodemesh.model` (layer 0) cannot, and spells
the two CEC resource type URLs it parses itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

TYPE_PREFIX = "type.googleapis.com/"

CLUSTER = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE = TYPE_PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
VIRTUAL_HOST = TYPE_PREFIX + "envoy.config.route.v3.VirtualHost"
SECRET = TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
RUNTIME = TYPE_PREFIX + "envoy.service.runtime.v3.Runtime"

SHORT_NAMES: Mapping[str, str] = MappingProxyType(
    {
        CLUSTER: "CDS",
        ENDPOINT: "EDS",
        LISTENER: "LDS",
        ROUTE: "RDS",
        SCOPED_ROUTE: "SRDS",
        VIRTUAL_HOST: "VHDS",
        SECRET: "SDS",
        RUNTIME: "RTDS",
    }
)
BY_SHORT_NAME: Mapping[str, str] = MappingProxyType({s: t for t, s in SHORT_NAMES.items()})

# The four types the translator produces, in make-before-break order, under
# the plural names operators type (`config-dump --type clusters`,
# `translate --type routes`).
ALIASES: Mapping[str, str] = MappingProxyType(
    {"clusters": "CDS", "endpoints": "EDS", "listeners": "LDS", "routes": "RDS"}
)
# Columns of `nodemesh status`, in the order an operator reads a proxy.
STATUS_COLUMNS: tuple[str, ...] = ("CDS", "LDS", "EDS", "RDS")

# The one metric label for every type URL this server does not know: label
# values never come from what a client typed (their number would be unbounded).
OTHER_TYPE_LABEL = "other"

# Where `nodemesh serve` listens for ADS unless told otherwise.
DEFAULT_XDS_ADDRESS = "127.0.0.1:18000"
# Pacing window for model changes, seconds: the first change after a quiet
# window is pushed at once, the rest of a burst together at the window's end
# (StreamSettings.coalesce_delay; istiod delays every push by 100 ms).
DEFAULT_PUSH_DELAY = 0.1


def short_name(type_url: str) -> str:
    """`CDS` for the cluster type URL; the bare message name for others."""
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


def type_url_of(name: str) -> str | None:
    """The type URL for a short name (`CDS`) or an alias (`clusters`)."""
    return BY_SHORT_NAME.get(ALIASES.get(name, name))


def metric_label(type_url: str) -> str:
    """The `type` label of a metric: the short name of a known type, else
    `other`, so no label value comes from unvalidated client input."""
    return SHORT_NAMES.get(type_url, OTHER_TYPE_LABEL)


def is_valid_type_url(type_url: str) -> bool:
    """A type URL must at least name a message under type.googleapis.com."""
    return type_url.startswith(TYPE_PREFIX) and len(type_url) > len(TYPE_PREFIX)
