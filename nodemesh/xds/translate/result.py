"""The translator's inputs and outputs: TranslateOptions and Translation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.message import Message

from nodemesh.model.objects import ObjectError, ObjectRef, ObjectWarning, Pairs, ServiceName


@dataclass(frozen=True, slots=True)
class TranslateOptions:
    """How one node's Envoy is configured.

    `node_name` and `node_labels` pick the CECs whose nodeSelector matches this
    node (None: no filtering, every CEC applies). `use_original_dst` adds the
    original_dst listener filter, so Envoy sees each steered connection's
    original destination (the datapath must provide it). `connect_timeout_ms`
    bounds Envoy's upstream connects to service backends. `access_log_socket`,
    when set, gives every redirect listener a gRPC access log streaming to the
    node agent on that Unix socket (`access_log.py`). `proxyless_domain` is
    the cluster domain of the `xds:///<svc>.<ns>.svc.<domain>:<port>`
    targets served to proxyless gRPC clients (None: none are served).
    """

    listener_address: str = "127.0.0.1"
    node_name: str | None = None
    node_labels: Pairs = ()
    use_original_dst: bool = False
    stat_prefix: str = "nodemesh"
    connect_timeout_ms: int = 5000
    access_log_socket: str | None = None
    proxyless_domain: str | None = "cluster.local"


@dataclass(frozen=True, slots=True)
class ServiceCluster:
    """One shared service cluster (a Service port) some output routes to."""

    name: str
    service: ServiceName
    port: int
    http2: bool = False  # the port's appProtocol says HTTP/2 (gRPC, h2c)


@dataclass(frozen=True, slots=True)
class ConfigOutput:
    """What one accepted CEC contributes (kept as its last good translation)."""

    resources: Mapping[str, Mapping[str, Message]]
    owners: Mapping[str, str]  # qualified name -> field it came from
    service_clusters: tuple[ServiceCluster, ...]
    warnings: tuple[ObjectWarning, ...]


def _empty() -> Mapping[str, Mapping[str, Message]]:
    return MappingProxyType({})


def _empty_names() -> Mapping[str, frozenset[str]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Translation:
    """Envoy resources for one model version.

    `resources` maps type URL (registry.CLUSTER, ENDPOINT, LISTENER, ROUTE; all
    four are always present, possibly empty) to resource name to message. The
    messages are shared with later translations when their input did not
    change (the very same object, so a cache may skip re-encoding by
    identity): the mappings and messages must not be altered.

    `errors` name the object, field and reason of everything that was
    rejected; for a CEC that had a good translation before, that one is still
    in `resources` (its errors say kept_previous). `last_good` is that memory,
    per CEC, for `translate(..., previous=)`.

    `named_only` maps a type URL to the names in `resources` that are served
    only to clients asking for them by name (the proxyless gRPC targets, and
    service clusters only they use): a wildcard subscription (the node
    Envoy's LDS and CDS) does not include them.
    """

    model_version: str
    resources: Mapping[str, Mapping[str, Message]] = field(default_factory=_empty)
    errors: tuple[ObjectError, ...] = ()
    warnings: tuple[ObjectWarning, ...] = ()
    last_good: Mapping[ObjectRef, ConfigOutput] = field(default_factory=dict)
    named_only: Mapping[str, frozenset[str]] = field(default_factory=_empty_names)

    def wildcard_resources(self) -> Mapping[str, Mapping[str, Message]]:
        """What a wildcard subscriber (the node Envoy) holds of `resources`:
        everything but the names served by name only."""
        if not self.named_only:
            return self.resources
        return MappingProxyType(
            {
                type_url: MappingProxyType(
                    {n: m for n, m in named.items() if n not in self.named_only.get(type_url, ())}
                )
                for type_url, named in self.resources.items()
            }
        )
