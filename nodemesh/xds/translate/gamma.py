"""Gateway API routes on a Service port (GAMMA) as one Envoy RouteConfiguration.

`route_config_for(model, service, port, namespace, name)` is the one function
that says what a client in `namespace` gets when it talks to `service:port`:
the node Envoy's listener for that port serves it over RDS, and proxyless
gRPC clients can be given the very same RouteConfiguration for their
`xds:///<svc>.<ns>.svc.cluster.local:<port>` api_listener.

Mapping (docs/gateway-api.md has the reasons):
- matches, in the model's merged precedence order, one Envoy route each:
  Exact -> `path`, PathPrefix -> `path_separated_prefix` ("/" -> `prefix`),
  RegularExpression -> `safe_regex`; headers and query parameters exact or
  RE2; method -> a `:method` header match;
- backendRefs -> `cluster` / `weighted_clusters` over the shared Service
  clusters; an invalid backend keeps its weight and names a cluster that does
  not exist, which Envoy answers with 500 (`cluster_not_found_response_code`);
  no usable backend at all -> a direct 500;
- RequestHeaderModifier / ResponseHeaderModifier -> headers_to_add/remove
  (set overwrites, add appends); RequestRedirect -> `redirect`; URLRewrite ->
  `host_rewrite_literal` and `regex_rewrite`; RequestMirror ->
  `request_mirror_policies`; timeouts.request -> `timeout`,
  timeouts.backendRequest -> `retry_policy.per_try_timeout`; retry -> the
  retry policy (codes, attempts, backoff).
What users write reaches Envoy only through fields whose Envoy rules the
model has checked it against (nodemesh.model.gamma: RE2, control characters,
the Host header, prefix patterns); the shapes built here are checked against
every protoc-gen-validate rule, and loaded into the real Envoy, by tests
(tests/xds/translate/test_translate_gamma_envoy.py). Walking the rules per
generated table in production cost 1 ms a table (bench.routes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from nodemesh.model.gamma import AttachedRule, ResolvedBackend, RouteEntry
from nodemesh.model.objects import ObjectError, ServiceName
from nodemesh.model.routes import HeaderModifier, PathModifier, Redirect, RouteFilter, ValueMatch
from nodemesh.model.snapshot import MeshModel
from nodemesh.xds.translate.listeners import service_route
from nodemesh.xds.translate.registry import pack, unpack
from nodemesh.xds.translate.result import ServiceCluster
from nodemesh.xds.translate.services import service_cluster

# Named by weighted entries whose backendRef did not resolve: no such cluster
# exists, so Envoy answers their share of requests with a 500, as the spec asks.
INVALID_BACKEND = "nodemesh/gamma/invalid-backend"
_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}
_SET = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_ADD = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


@dataclass(frozen=True, slots=True)
class GammaRoute:
    """One RouteConfiguration, the Service clusters it routes to, and what
    went wrong (on the routes that caused it)."""

    config: route_pb2.RouteConfiguration
    clusters: tuple[ServiceCluster, ...]
    errors: tuple[ObjectError, ...] = ()


def route_config_for(
    model: MeshModel, service: ServiceName, port: int, namespace: str | None, name: str
) -> GammaRoute | None:
    """What a client in `namespace` (None: any) gets on `service:port`, as the
    RouteConfiguration `name`; None when no route is attached there."""
    table = model.gamma.tables.get((service, port))
    if table is None:
        return None
    entries = table.entries_for(namespace)
    if not entries:
        target = model.services.get(service)
        if target is None:
            return None
        cluster = service_cluster(target, port)
        return GammaRoute(service_route(name, cluster.name), (cluster,))
    return build_route_config(model, entries, name)


def build_route_config(model: MeshModel, entries: Iterable[RouteEntry], name: str) -> GammaRoute:
    config = route_pb2.RouteConfiguration(name=name)
    # Unresolved backends name a cluster that does not exist (a 500 for their
    # share): Envoy must not refuse the table for it, however it gets it
    # (RDS defaults to not checking, a static table to checking).
    config.validate_clusters.value = False
    host = config.virtual_hosts.add(name=name, domains=["*"])
    clusters: dict[str, ServiceCluster] = {}
    owners = []
    for entry in entries:
        owners.append(entry.rule.route)
        route = host.routes.add()
        _match(route.match, entry)
        _action(model, route, entry.rule, clusters)
    return GammaRoute(config, tuple(clusters.values()))


def _string(match: ValueMatch, target: string_pb2.StringMatcher) -> None:
    if match.type == "RegularExpression":
        target.safe_regex.regex = match.value
    else:
        target.exact = match.value


def _match(target: rc.RouteMatch, entry: RouteEntry) -> None:
    path = entry.match.path
    if path is None:
        target.prefix = "/"
    elif path.type == "Exact":
        target.path = path.value
    elif path.type == "RegularExpression":
        target.safe_regex.regex = path.value
    else:
        # "/foo" and "/foo/" both match "/foo" and "/foo/..." but not "/foobar".
        trimmed = path.value.rstrip("/")
        if trimmed:
            target.path_separated_prefix = trimmed
        else:
            target.prefix = "/"
    for header in entry.match.headers:
        _string(header, target.headers.add(name=header.name.lower()).string_match)
    if entry.match.method is not None:
        target.headers.add(name=":method").string_match.exact = entry.match.method
    for query in entry.match.query:
        _string(query, target.query_parameters.add(name=query.name).string_match)
    if entry.rule.grpc:
        target.grpc.SetInParent()


def _action(
    model: MeshModel, route: rc.Route, rule: AttachedRule, clusters: dict[str, ServiceCluster]
) -> None:
    filters = rule.rule.filters
    for f in filters:
        if f.request_headers is not None:
            _headers(
                f.request_headers, route.request_headers_to_add, route.request_headers_to_remove
            )
        if f.response_headers is not None:
            _headers(
                f.response_headers, route.response_headers_to_add, route.response_headers_to_remove
            )
    redirect = next((f.redirect for f in filters if f.redirect is not None), None)
    if rule.error_status is not None:
        route.direct_response.status = rule.error_status
        return
    if redirect is not None:
        _redirect(route, rule, redirect)
        return
    live = [b for b in rule.backends if b.ref.weight > 0]
    if not live:
        route.direct_response.status = 500  # no backendRefs, or every weight 0
        return
    action = route.route
    action.cluster_not_found_response_code = rc.RouteAction.INTERNAL_SERVER_ERROR
    if len(live) == 1 and not live[0].ref.filters:
        action.cluster = _cluster(model, live[0], clusters, rule.grpc)
    else:
        # Per-backend filters need a weighted entry to live on, even for one backend.
        for backend in live:
            weighted = action.weighted_clusters.clusters.add()
            weighted.name = _cluster(model, backend, clusters, rule.grpc)
            weighted.weight.value = backend.ref.weight
            for f in backend.ref.filters:
                if f.request_headers is not None:
                    _headers(
                        f.request_headers,
                        weighted.request_headers_to_add,
                        weighted.request_headers_to_remove,
                    )
                if f.response_headers is not None:
                    _headers(
                        f.response_headers,
                        weighted.response_headers_to_add,
                        weighted.response_headers_to_remove,
                    )
    _rewrite(action, rule, filters)
    _mirrors(model, action, rule, clusters)
    _timeouts(action, rule)


def _cluster(
    model: MeshModel, backend: ResolvedBackend, clusters: dict[str, ServiceCluster], grpc: bool
) -> str:
    service = model.services.get(backend.service) if backend.service else None
    if service is None or backend.port is None:
        return INVALID_BACKEND
    cluster = service_cluster(service, backend.port)
    if grpc and not cluster.http2:
        # gRPC needs HTTP/2 upstream whatever the port's appProtocol says.
        cluster = replace(cluster, http2=True)
    clusters.setdefault(cluster.name, cluster)
    return cluster.name


def _headers(modifier: HeaderModifier, add: Any, remove: Any) -> None:
    """`add`/`remove`: a route's (request|response)_headers_to_(add|remove)."""
    for name, value in modifier.set:
        add.add(header=base_pb2.HeaderValue(key=name, value=value), append_action=_SET)
    for name, value in modifier.add:
        add.add(header=base_pb2.HeaderValue(key=name, value=value), append_action=_ADD)
    remove.extend(modifier.remove)


def _prefix_of(rule: AttachedRule) -> str:
    path = rule.rule.matches[0].path if len(rule.rule.matches) == 1 else None
    return path.value.rstrip("/") if path is not None and path.type == "PathPrefix" else ""


def _path_rewrite(path: PathModifier, rule: AttachedRule) -> regex_pb2.RegexMatchAndSubstitute:
    """The path part of a redirect or rewrite as an RE2 substitution (query kept)."""
    out = regex_pb2.RegexMatchAndSubstitute()
    if path.type == "ReplaceFullPath":
        out.pattern.regex = "^/.*$"
        out.substitution = path.value
        return out
    prefix = re.escape(_prefix_of(rule))
    replacement = path.value.rstrip("/")
    if replacement:
        # "/prefix/rest" -> "<replacement>/rest", "/prefix" -> "<replacement>".
        out.pattern.regex = f"^{prefix}(/.*)?$"
        out.substitution = f"{replacement}\\1"
    else:
        # Replaced by "/": "/prefix/rest" -> "/rest", "/prefix" -> "/".
        out.pattern.regex = f"^{prefix}/*(.*)$"
        out.substitution = "/\\1"
    return out


def _redirect(route: rc.Route, rule: AttachedRule, redirect: Redirect) -> None:
    action = route.redirect
    action.response_code = _REDIRECT_CODES[redirect.status_code]
    if redirect.scheme is not None:
        action.scheme_redirect = redirect.scheme
    if redirect.hostname is not None:
        action.host_redirect = redirect.hostname
    if redirect.port is not None:
        action.port_redirect = redirect.port
    elif redirect.scheme is not None:
        # The spec: a changed scheme without a port goes to that scheme's
        # well-known port, which a redirect then leaves out of Location.
        action.port_redirect = 443 if redirect.scheme == "https" else 80
    if redirect.path is not None:
        action.regex_rewrite.CopyFrom(_path_rewrite(redirect.path, rule))


def _rewrite(action: rc.RouteAction, rule: AttachedRule, filters: tuple[RouteFilter, ...]) -> None:
    rewrite = next((f.rewrite for f in filters if f.rewrite is not None), None)
    if rewrite is None:
        return
    if rewrite.hostname is not None:
        action.host_rewrite_literal = rewrite.hostname
    if rewrite.path is not None:
        action.regex_rewrite.CopyFrom(_path_rewrite(rewrite.path, rule))


def _mirrors(
    model: MeshModel,
    action: rc.RouteAction,
    rule: AttachedRule,
    clusters: dict[str, ServiceCluster],
) -> None:
    mirrors = [f.mirror for f in rule.rule.filters if f.mirror is not None]
    for mirror, resolved in zip(mirrors, rule.mirrors, strict=True):
        if resolved.service is None:
            continue  # unresolved: ResolvedRefs says so; nothing to copy to
        policy = action.request_mirror_policies.add()
        policy.cluster = _cluster(model, resolved, clusters, rule.grpc)
        if (mirror.numerator, mirror.denominator) != (100, 100):
            fraction = policy.runtime_fraction.default_value
            fraction.numerator = mirror.numerator * 1_000_000 // mirror.denominator
            fraction.denominator = percent_pb2.FractionalPercent.MILLION


def _timeouts(action: rc.RouteAction, rule: AttachedRule) -> None:
    spec = rule.rule
    if spec.request_timeout_ms is not None:
        action.timeout.FromMilliseconds(spec.request_timeout_ms)
    retry = spec.retry
    if spec.backend_timeout_ms is None and retry is None:
        return
    policy = action.retry_policy
    if spec.backend_timeout_ms:
        policy.per_try_timeout.FromMilliseconds(spec.backend_timeout_ms)
    if retry is None:
        policy.num_retries.value = 0
        return
    if retry.codes:
        policy.retry_on = "retriable-status-codes"
        policy.retriable_status_codes.extend(retry.codes)
    else:
        policy.retry_on = "connect-failure,refused-stream,unavailable,cancelled,reset"
    if retry.attempts is not None:
        policy.num_retries.value = retry.attempts
    if retry.backoff_ms:
        policy.retry_back_off.base_interval.FromMilliseconds(retry.backoff_ms)


def clusters_needed(routes: Mapping[str, GammaRoute]) -> dict[str, ServiceCluster]:
    return {c.name: c for r in routes.values() for c in r.clusters}


def consumer_ips(model: MeshModel, namespace: str) -> tuple[str, ...]:
    """The addresses of `namespace`'s pods: how the node Envoy tells a consumer
    route's clients (steered to the same listener as everyone) apart."""
    return tuple(sorted({ip for p in model.pods if p.ref.namespace == namespace for ip in p.ips}))


def add_consumer_chains(
    listener: listener_pb2.Listener, scopes: Iterable[tuple[str, str, tuple[str, ...]]]
) -> None:
    """One filter chain per consumer namespace (route config, source addresses)
    beside the listener's first chain (producer routes), in place. Envoy picks
    the chain whose source prefix matches most specifically, so a consumer
    namespace's pods get its routes and every other client the first chain."""
    base = listener.filter_chains[0]
    for namespace, route_name, ips in scopes:
        if not ips:
            continue  # no pods: nobody to serve (an empty range would match everyone)
        chain = listener.filter_chains.add()
        chain.CopyFrom(base)
        chain.name = f"consumer/{namespace}"
        for ip in ips:
            chain.filter_chain_match.source_prefix_ranges.add(
                address_prefix=ip, prefix_len={"value": 128 if ":" in ip else 32}
            )
        manager = unpack(chain.filters[0].typed_config)
        assert isinstance(manager, hcm_pb2.HttpConnectionManager)
        manager.rds.route_config_name = route_name
        chain.filters[0].typed_config.CopyFrom(pack(manager))
