"""Static checks on user resources: deprecated fields (converted or warned
about) and weighted-cluster totals Envoy would reject.

The article's RouteConfiguration sets `weighted_clusters.total_weight`, which
the v3 API deprecated at 3.0: Envoy 1.40 still parses it but ignores it (the
sum of the weights is the total). nodemesh drops it after checking that it
agrees with that sum, so the split the user reads is the split Envoy makes;
a total that disagrees is an error, because the user meant a different split.
Any other field marked deprecated in the protos Envoy was built from is kept
and reported as a warning naming it.

Weights must sum to more than zero (Envoy NACKs a route otherwise), and each
weighted entry needs a cluster name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from nodemesh.xds.translate.errors import ResourceError
from nodemesh.xds.translate.references import HCM_TYPE
from nodemesh.xds.translate.registry import TYPE_PREFIX, pack, unpack

_ROUTER_TYPE = TYPE_PREFIX + router_pb2.Router.DESCRIPTOR.full_name


@dataclass
class Findings:
    """Warnings (field, reason) and errors found while walking one resource."""

    warnings: list[tuple[str, str]] = field(default_factory=list)
    errors: list[ResourceError] = field(default_factory=list)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _convert_total_weight(
    weighted: route_components_pb2.WeightedCluster, path: str, findings: Findings
) -> None:
    total = weighted.total_weight.value
    actual = sum(c.weight.value for c in weighted.clusters)
    where = _join(path, "total_weight")
    if total != actual:
        findings.errors.append(
            ResourceError(
                where,
                f"total_weight {total} does not equal the sum of the cluster weights "
                f"({actual}); Envoy ignores total_weight, so fix the weights",
            )
        )
        return
    weighted.ClearField("total_weight")
    findings.warnings.append(
        (where, "deprecated field removed from the v3 API; dropped (it equals the weights' sum)")
    )


def _check_weights(
    weighted: route_components_pb2.WeightedCluster, path: str, findings: Findings
) -> None:
    if sum(c.weight.value for c in weighted.clusters) == 0:
        findings.errors.append(
            ResourceError(_join(path, "clusters"), "the cluster weights sum to 0")
        )
    for index, entry in enumerate(weighted.clusters):
        if not (entry.name or entry.cluster_header):
            findings.errors.append(
                ResourceError(
                    _join(path, f"clusters[{index}].name"), "weighted cluster has no name"
                )
            )


def _visit(message: Message, path: str, findings: Findings) -> bool:
    """Walk one message; True when something was changed (or repacked) in place."""
    changed = False
    if isinstance(message, route_components_pb2.WeightedCluster):
        _check_weights(message, path, findings)
        if message.HasField("total_weight"):
            _convert_total_weight(message, path, findings)
            changed = True
    for descriptor, value in message.ListFields():
        name = _join(path, descriptor.name)
        if descriptor.GetOptions().deprecated:
            findings.warnings.append((name, "deprecated field; Envoy may drop it in a release"))
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if descriptor.is_repeated:
            entry = descriptor.message_type
            if entry is not None and entry.GetOptions().map_entry:
                items = [(f"{name}[{k!r}]", v) for k, v in value.items() if isinstance(v, Message)]
            else:
                items = [(f"{name}[{i}]", item) for i, item in enumerate(value)]
            for item_path, item in items:
                changed |= _visit_one(item, item_path, findings)
        else:
            changed |= _visit_one(value, name, findings)
    return changed


def _visit_one(message: Message, path: str, findings: Findings) -> bool:
    if isinstance(message, any_pb2.Any):
        if not message.type_url:
            findings.errors.append(ResourceError(path, "typed config without an @type"))
            return False
        inner = unpack(message)
        _visit(inner, path, findings)
        # Always repacked: the JSON parser packs embedded messages with maps in
        # an order that differs between processes, and the same resource must
        # encode to the same bytes on every replica and after every restart.
        message.CopyFrom(pack(inner))
        return True
    return _visit(message, path, findings)


def check_resource(message: Message, path: str = "") -> Findings:
    """Convert or report every deprecated field set in `message`, check weighted
    clusters, and repack embedded messages deterministically (all in place)."""
    findings = Findings()
    _visit(message, path, findings)
    return findings


def check_http_filters(listener: listener_pb2.Listener, path: str) -> list[ResourceError]:
    """Envoy NACKs a filter without a typed_config (it finds implementations by
    type), and an HTTP filter chain whose last filter is not terminal or whose
    terminal filter is not last; the router is the terminal filter."""
    errors = []
    chains = [(f"filter_chains[{i}]", c) for i, c in enumerate(listener.filter_chains)]
    if listener.HasField("default_filter_chain"):
        chains.append(("default_filter_chain", listener.default_filter_chain))
    for where, chain in chains:
        for index, network_filter in enumerate(chain.filters):
            at = _join(path, f"{where}.filters[{index}]")
            if not network_filter.HasField("typed_config"):
                errors.append(_untyped(at, network_filter.name))
            if network_filter.typed_config.type_url != HCM_TYPE:
                continue
            manager = unpack(network_filter.typed_config)
            assert isinstance(manager, hcm_pb2.HttpConnectionManager)
            for position, http_filter in enumerate(manager.http_filters):
                if not http_filter.HasField("typed_config"):
                    where_http = f"{at}.typed_config.http_filters[{position}]"
                    errors.append(_untyped(where_http, http_filter.name))
            routers = [f.typed_config.type_url == _ROUTER_TYPE for f in manager.http_filters]
            if routers and (not routers[-1] or routers.count(True) > 1):
                errors.append(
                    ResourceError(
                        f"{at}.typed_config.http_filters",
                        "the router (envoy.filters.http.router) must be the last HTTP filter, "
                        "and only the last",
                    )
                )
    return errors


def _untyped(where: str, name: str) -> ResourceError:
    # Envoy finds a filter's implementation by its typed_config's @type only.
    return ResourceError(f"{where}.typed_config", f"filter {name!r} needs a typed_config")
