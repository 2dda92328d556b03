"""Parsing of the cilium.io kinds: CiliumEnvoyConfig and CiliumNetworkPolicy
(and their clusterwide twins). Called through `nodemesh.model.parse`.

A CNP's L3/L4 rules are parsed by `parse_policy` (the kernel enforces them);
its `rules.http` under toServices become L7 redirects here. L7 rules that
nodemesh does not enforce (non-HTTP, or HTTP outside toServices) are named in
a warning rather than dropped silently.
"""

from __future__ import annotations

import json
import re
import warnings as pywarnings
from collections.abc import Iterator
from typing import Any

from nodemesh.model import parse_policy
from nodemesh.model.errors import ParseError
from nodemesh.model.fields import Fields, join
from nodemesh.model.objects import (
    EgressRule,
    EnvoyConfig,
    EnvoyResource,
    HeaderMatch,
    HTTPRule,
    NetworkPolicy,
    ObjectRef,
    ObjectWarning,
    PortProtocol,
    RedirectedService,
    ServiceName,
)

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_MISMATCH_ACTIONS = ("", "LOG", "ADD", "DELETE", "REPLACE")
_PORT_PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY")
_WEIGHTED = ("weighted_clusters", "weightedClusters")
_TOTAL_WEIGHT = ("total_weight", "totalWeight")


def envoy_config(
    ref: ObjectRef, top: Fields, created: str
) -> tuple[EnvoyConfig, tuple[ObjectWarning, ...]]:
    spec = top.req_map("spec")
    resources = tuple(_resource(r) for r in spec.maps("resources"))
    seen: dict[tuple[str, str], str] = {}
    for res in resources:
        other = seen.setdefault((res.type_url, res.name), res.field)
        if other != res.field:
            raise ParseError(ref, f"{res.field}.name", f"{res.name!r} is also {other}'s name")
    listeners = [r.name for r in resources if r.type_url == LISTENER_TYPE]
    services = tuple(_redirected(s, listeners) for s in spec.maps("services"))
    backends = tuple(_redirected(s, None) for s in spec.maps("backendServices"))
    config = EnvoyConfig(
        ref=ref,
        services=services,
        backend_services=backends,
        resources=resources,
        node_selector=spec.selector("nodeSelector"),
        creation_timestamp=created,
    )
    found = tuple(
        ObjectWarning(ref, path, "deprecated Envoy field: weights need not sum to a total")
        for res, raw in zip(resources, spec.data.get("resources") or (), strict=True)
        for path in _total_weights(raw, res.field)
    )
    return config, found


def _resource(entry: Fields) -> EnvoyResource:
    type_url = entry.req_str("@type")
    if "/" not in type_url:
        raise entry.error("@type", f"{type_url!r} is not a type URL ('type.googleapis.com/...')")
    name = _resource_name(entry, type_url)
    body = {k: v for k, v in entry.data.items() if k != "@type"}
    try:
        # Canonical JSON: sorted keys, so equal resources give equal strings.
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise entry.error(None, f"is not plain JSON data: {exc}") from exc
    return EnvoyResource(type_url=type_url, name=name, body=text, field=entry.path)


def _resource_name(entry: Fields, type_url: str) -> str:
    """A resource's xDS name: a ClusterLoadAssignment names itself by
    `cluster_name` (JSON: `clusterName`), every other type by `name`."""
    if type_url != ENDPOINT_TYPE:
        return entry.req_str("name")
    if "clusterName" in entry.data and "cluster_name" not in entry.data:
        return entry.req_str("clusterName")
    return entry.req_str("cluster_name")


def _redirected(entry: Fields, listeners: list[str] | None) -> RedirectedService:
    name = entry.req_str("name")
    namespace = entry.opt_str("namespace") or (entry.ref.namespace if entry.ref else "")
    if not namespace:
        raise entry.error("namespace", "is required in a clusterwide config")
    ports = []
    for path, value in entry.items("ports"):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise ParseError(entry.ref, path, f"{value!r} is not a port number")
        ports.append(value)
    listener = entry.opt_str("listener", "") or ""
    if listeners is not None:
        if listener and listener not in listeners:
            raise entry.error("listener", f"no Listener named {listener!r} in spec.resources")
        if not listener and len(listeners) > 1:
            raise entry.error("listener", "is required: spec.resources has several Listeners")
    return RedirectedService(ServiceName(namespace, name), tuple(ports), listener)


def _total_weights(node: Any, path: str) -> Iterator[str]:
    """Paths of every weighted_clusters.total_weight under `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = join(path, str(key))
            if key in _WEIGHTED and isinstance(value, dict):
                yield from (join(here, k) for k in _TOTAL_WEIGHT if k in value)
            yield from _total_weights(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _total_weights(value, join(path, index))


def network_policy(ref: ObjectRef, top: Fields) -> tuple[NetworkPolicy, tuple[ObjectWarning, ...]]:
    if top.has("specs"):
        raise top.error("specs", "several rule sets per policy are not supported; use spec")
    spec = top.req_map("spec")
    if spec.has("nodeSelector"):
        raise spec.error("nodeSelector", "node (host firewall) policies are not supported")
    selector = spec.selector("endpointSelector")
    if selector is None:
        raise spec.error("endpointSelector", "is required")
    rules, notes_ = parse_policy.cilium_rules(ref, spec, selector)
    notes = list(notes_)
    egress: list[EgressRule] = []
    for rule in spec.maps("egress"):
        egress.extend(_egress_rule(rule, notes))
    return NetworkPolicy(ref, selector, tuple(egress), rules), tuple(notes)


def _egress_rule(rule: Fields, notes: list[ObjectWarning]) -> list[EgressRule]:
    """The L7 part of an egress rule: toServices with HTTP rules (L3/L4 is
    `parse_policy`'s)."""
    services = []
    for target in rule.maps("toServices"):
        k8s = target.opt_map("k8sService")
        if k8s is None:
            raise target.error("k8sService", "is required (k8sServiceSelector is not supported)")
        default_ns = rule.ref.namespace if rule.ref else ""
        namespace = k8s.opt_str("namespace") or default_ns
        if not namespace:
            raise k8s.error("namespace", "is required in a clusterwide policy")
        services.append(ServiceName(namespace, k8s.req_str("serviceName")))
    if not services:
        return []
    # The article writes `rules` beside `toServices`; Cilium's schema puts it
    # under `toPorts[]`. Both mean the same here.
    outer = _l7_rules(rule, notes)
    port_sets = list(rule.maps("toPorts"))
    if not port_sets:
        return [EgressRule(tuple(services), (), outer)]
    out = []
    for port_set in port_sets:
        inner = _l7_rules(port_set, notes)
        http = inner if outer is None else outer if inner is None else outer + inner
        out.append(EgressRule(tuple(services), _port_protocols(port_set), http))
    return out


def _port_protocols(port_set: Fields) -> tuple[PortProtocol, ...]:
    out = []
    for entry in port_set.maps("ports"):
        raw = entry.data.get("port")
        if isinstance(raw, str) and raw.isdigit():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 65535:
            raise entry.error("port", f"{raw!r} is not a port number (named ports unsupported)")
        if entry.has("endPort"):
            raise entry.error("endPort", "port ranges are not supported")
        protocol = entry.opt_str("protocol", "ANY") or "ANY"
        if protocol not in _PORT_PROTOCOLS:
            raise entry.error("protocol", f"must be one of {', '.join(_PORT_PROTOCOLS)}")
        out.append(PortProtocol(raw, protocol))
    return tuple(out)


def _l7_rules(holder: Fields, notes: list[ObjectWarning]) -> tuple[HTTPRule, ...] | None:
    rules = holder.opt_map("rules")
    if rules is None:
        return None
    for key in rules.data:
        if key != "http":
            notes.append(_warn(rules, str(key), "only HTTP rules are supported; ignored"))
    if not rules.has("http"):
        return None
    http = tuple(_http_rule(r) for r in rules.maps("http"))
    if not http:
        raise rules.error("http", "is empty; write [{}] to allow every request")
    return http


def _http_rule(entry: Fields) -> HTTPRule:
    method = _regex(entry, "method")
    path = _regex(entry, "path")
    matches = []
    for match in entry.maps("headerMatches"):
        if match.has("secret"):
            raise match.error("secret", "secret-valued header matches are not supported")
        mismatch = match.opt_str("mismatch", "") or ""
        if mismatch not in _MISMATCH_ACTIONS:
            raise match.error("mismatch", f"must be one of {', '.join(_MISMATCH_ACTIONS[1:])}")
        matches.append(HeaderMatch(match.req_str("name"), match.opt_str("value"), mismatch))
    return HTTPRule(
        method=method,
        path=path,
        host=_regex(entry, "host"),
        headers=entry.strings("headers"),
        header_matches=tuple(matches),
    )


def _regex(entry: Fields, key: str) -> str | None:
    value = entry.opt_str(key)
    if value is None:
        return None
    try:
        with pywarnings.catch_warnings():
            # POSIX classes like [[:alpha:]] are valid for Envoy, only odd to re.
            pywarnings.simplefilter("ignore", FutureWarning)
            re.compile(value)
    except re.error as exc:
        raise entry.error(key, f"{value!r} is not a valid regular expression: {exc}") from exc
    return value


def _warn(fields: Fields, key: str | None, reason: str) -> ObjectWarning:
    assert fields.ref is not None
    return ObjectWarning(fields.ref, fields.path if key is None else join(fields.path, key), reason)
