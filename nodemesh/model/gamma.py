"""GAMMA: which routes apply to which Service port, for whom, and their status.

Derived from the accepted HTTPRoutes, GRPCRoutes, ReferenceGrants, Services
and the CiliumEnvoyConfigs' service ports (docs/gateway-api.md says why each
rule is what it is):

- A parentRef of kind Service (group "") attaches a route to that Service's
  port (`port`, or the port `sectionName` names, or every TCP port).
- A route in the Service's namespace is a producer route and applies to every
  client; a route elsewhere is a consumer route and applies to clients in its
  own namespace only, replacing the producer routes for them.
- The routes of one scope are merged into one ordered list of matches by the
  spec's precedence (Exact path, longest prefix, method, most headers, most
  query parameters), ties going to the oldest route, then by namespace/name,
  then rule and match order. A match identical to one earlier in the list can
  never be chosen; its route's Accepted condition says which route won.
- A CiliumEnvoyConfig that redirects the same Service port keeps it: the
  route does not attach there (Accepted False, ConflictsWithEnvoyConfig) and
  the CEC gets a warning naming the route.
- A backendRef to another namespace needs a ReferenceGrant there, unless it
  names the Service the route is attached to (GEP-1426: a consumer route may
  send to its parent Service).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nodemesh.model.objects import (
    ObjectError,
    ObjectRef,
    ObjectWarning,
    Service,
    ServiceName,
)
from nodemesh.model.regex import re2_problem
from nodemesh.model.routes import (
    BackendRef,
    GrantFrom,
    GrantTo,
    HeaderModifier,
    ParentRef,
    ReferenceGrant,
    Route,
    RouteMatch,
    RouteRule,
)

CONTROLLER_NAME = "nodemesh.io/mesh-controller"
GATEWAY_GROUP = "gateway.networking.k8s.io"


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class ParentStatus:
    parent: ParentRef
    conditions: tuple[Condition, ...]

    @property
    def accepted(self) -> bool:
        return any(c.type == "Accepted" and c.status for c in self.conditions)


@dataclass(frozen=True, slots=True)
class RouteStatus:
    """status.parents[] of one route, for the parents of kind Service."""

    ref: ObjectRef
    generation: int
    parents: tuple[ParentStatus, ...]


@dataclass(frozen=True, slots=True)
class ResolvedBackend:
    """A backendRef and the Service port it resolved to (service None: invalid,
    requests that would go to it get a 500)."""

    ref: BackendRef
    service: ServiceName | None
    port: int | None


@dataclass(frozen=True, slots=True)
class AttachedRule:
    route: ObjectRef
    rule: RouteRule
    backends: tuple[ResolvedBackend, ...]
    mirrors: tuple[ResolvedBackend, ...]  # one per RequestMirror filter, in order
    # 500 for every request (an unresolvable ExtensionRef filter); None otherwise.
    error_status: int | None = None
    grpc: bool = False


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One match of one rule, at its place in the merged order."""

    match: RouteMatch
    match_index: int
    rule: AttachedRule


@dataclass(frozen=True, slots=True)
class ServiceRoutes:
    """The routes on one Service port: `producer` for every client, and per
    consumer namespace the entries that replace them for that namespace."""

    service: ServiceName
    port: int
    producer: tuple[RouteEntry, ...]
    consumers: tuple[tuple[str, tuple[RouteEntry, ...]], ...]
    owners: tuple[ObjectRef, ...]

    def entries_for(self, namespace: str | None) -> tuple[RouteEntry, ...]:
        """What a client in `namespace` gets (None: a client of no consumer scope)."""
        for scope, entries in self.consumers:
            if scope == namespace:
                return entries
        return self.producer


@dataclass(frozen=True, slots=True)
class Gamma:
    tables: Mapping[tuple[ServiceName, int], ServiceRoutes] = field(default_factory=dict)
    statuses: tuple[RouteStatus, ...] = ()
    errors: tuple[ObjectError, ...] = ()
    warnings: tuple[ObjectWarning, ...] = ()


@dataclass(slots=True)
class _Resolved:
    rules: list[AttachedRule]
    unresolved: list[Condition]  # ResolvedRefs False, first reason wins
    unsupported: list[str]


@dataclass(frozen=True, slots=True)
class RouteResult:
    """What one route contributes, given the Services, grants and CEC ports:
    its parents' conditions (before conflicts with other routes are known),
    its entries per (Service port, scope), and its errors and warnings."""

    route: Route
    parents: tuple[ParentStatus, ...]
    attached: tuple[tuple[tuple[ServiceName, int], str, tuple[RouteEntry, ...]], ...]
    errors: tuple[ObjectError, ...]
    warnings: tuple[ObjectWarning, ...]


def route_result(
    route: Route,
    services: Mapping[ServiceName, Service],
    grants: Sequence[ReferenceGrant],
    cec_ports: Mapping[tuple[ServiceName, int], ObjectRef],
) -> RouteResult:
    resolved = _resolve(route, services, grants)
    entries = tuple(_entries(resolved.rules))
    parents = []
    attached = []
    errors: list[ObjectError] = []
    warnings: list[ObjectWarning] = []
    for index, parent in enumerate(route.parents):
        if parent.group != "" or parent.kind != "Service":
            continue  # a Gateway's: another controller's business
        where = f"spec.parentRefs[{index}]"
        accepted, ports = _attach(route, parent, services, cec_ports, resolved, warnings)
        if not accepted.status:
            errors.append(ObjectError(route.ref, where, f"{accepted.reason}: {accepted.message}"))
        scope = "" if route.ref.namespace == parent.namespace else route.ref.namespace
        for port in ports:
            attached.append(((ServiceName(parent.namespace, parent.name), port), scope, entries))
        parents.append(ParentStatus(parent, (accepted, _resolved_refs(resolved))))
    for problem in resolved.unresolved:
        warnings.append(ObjectWarning(route.ref, "spec.rules", problem.message))
    return RouteResult(route, tuple(parents), tuple(attached), tuple(errors), tuple(warnings))


TableMemo = dict[
    tuple[ServiceName, int],
    tuple[tuple[object, ...], ServiceRoutes, tuple[tuple[ObjectRef, str], ...]],
]


def assemble_gamma(results: Sequence[RouteResult], memo: TableMemo | None = None) -> Gamma:
    """The route tables and statuses from every route's result (oldest first).

    `memo` (kept by the caller between rounds) lets a Service port whose
    entries are the very same objects as last round keep its table."""
    scopes: dict[tuple[ServiceName, int], dict[str, list[RouteEntry]]] = {}
    owners: dict[tuple[ServiceName, int], list[ObjectRef]] = {}
    for result in results:
        for key, scope, entries in result.attached:
            scopes.setdefault(key, {}).setdefault(scope, []).extend(entries)
            owners.setdefault(key, []).append(result.route.ref)
    age = {
        r.route.ref: (r.route.creation_timestamp, r.route.ref.namespace, r.route.ref.name)
        for r in results
    }
    tables, shadowed = _tables(scopes, owners, age, {} if memo is None else memo)
    statuses = [
        _with_conflicts(
            RouteStatus(r.route.ref, r.route.generation, r.parents), shadowed.get(r.route.ref, ())
        )
        for r in results
        if r.parents
    ]
    errors = tuple(e for r in results for e in r.errors)
    warnings = tuple(w for r in results for w in r.warnings)
    return Gamma(tables, tuple(statuses), errors, warnings)


def derive_gamma(
    services: Mapping[ServiceName, Service],
    routes: Sequence[Route],
    grants: Iterable[ReferenceGrant],
    cec_ports: Mapping[tuple[ServiceName, int], ObjectRef],
) -> Gamma:
    """`routes` oldest first; `cec_ports` are the Service ports CECs redirect."""
    grant_list = tuple(grants)
    return assemble_gamma([route_result(r, services, grant_list, cec_ports) for r in routes])


def _attach(
    route: Route,
    parent: ParentRef,
    services: Mapping[ServiceName, Service],
    cec_ports: Mapping[tuple[ServiceName, int], ObjectRef],
    resolved: _Resolved,
    warnings: list[ObjectWarning],
) -> tuple[Condition, list[int]]:
    """The Accepted condition for one Service parent, and the ports attached."""
    name = ServiceName(parent.namespace, parent.name)
    service = services.get(name)
    if service is None:
        return _not_accepted("NoMatchingParent", f"Service {name} does not exist"), []
    tcp = [p for p in service.ports if p.protocol == "TCP"]
    if parent.port is not None:
        tcp = [p for p in tcp if p.port == parent.port]
    if parent.section_name is not None:
        tcp = [p for p in tcp if p.name == parent.section_name]
    if not tcp:
        return _not_accepted("NoMatchingParent", f"Service {name} has no such TCP port"), []
    if resolved.unsupported:
        return _not_accepted("UnsupportedValue", "; ".join(resolved.unsupported)), []
    ports = []
    held = []
    for port in tcp:
        cec = cec_ports.get((name, port.port))
        if cec is None:
            ports.append(port.port)
            continue
        held.append(f"{port.port} (by {cec})")
        reason = f"{route.ref} also attaches to {name}:{port.port}; this config keeps the port"
        warnings.append(ObjectWarning(cec, "spec.services", reason))
    if held and not ports:
        message = f"Service port {', '.join(held)} is redirected by a CiliumEnvoyConfig"
        return _not_accepted("ConflictsWithEnvoyConfig", message), []
    message = "attached to the Service" + (
        f"; not to port {', '.join(held)}, redirected by a CiliumEnvoyConfig" if held else ""
    )
    return Condition("Accepted", True, "Accepted", message), ports


def _not_accepted(reason: str, message: str) -> Condition:
    return Condition("Accepted", False, reason, message)


def _resolved_refs(resolved: _Resolved) -> Condition:
    if resolved.unresolved:
        first = resolved.unresolved[0]
        message = "; ".join(c.message for c in resolved.unresolved)
        return Condition("ResolvedRefs", False, first.reason, message)
    return Condition("ResolvedRefs", True, "ResolvedRefs", "all references resolved")


def _resolve(
    route: Route, services: Mapping[ServiceName, Service], grants: Sequence[ReferenceGrant]
) -> _Resolved:
    out = _Resolved([], [], [])
    parents = {ServiceName(p.namespace, p.name) for p in route.parents if p.kind == "Service"}
    for rule in route.rules:
        where = f"spec.rules[{rule.index}]"
        _check_regexes(rule, where, out.unsupported)
        _check_envoy_values(rule, where, out.unsupported)
        backends = tuple(
            _backend(route, b, services, grants, parents, out.unresolved) for b in rule.backends
        )
        for backend in rule.backends:
            for f in backend.filters:
                if f.request_headers is None and f.response_headers is None:
                    out.unsupported.append(
                        f"{backend.field}.filters: only header modifiers are supported "
                        f"per backend, not {f.type}"
                    )
        mirrors = []
        error_status = None
        for index, f in enumerate(rule.filters):
            if f.type == "CORS":
                out.unsupported.append(f"{where}.filters[{index}]: CORS is not supported")
            elif f.type == "ExtensionRef":
                error_status = 500
                out.unresolved.append(
                    Condition(
                        "ResolvedRefs",
                        False,
                        "InvalidKind",
                        f"{where}.filters[{index}]: no ExtensionRef filter kinds are supported",
                    )
                )
            elif f.mirror is not None:
                mirrors.append(
                    _backend(route, f.mirror.backend, services, grants, parents, out.unresolved)
                )
        out.rules.append(
            AttachedRule(route.ref, rule, backends, tuple(mirrors), error_status, route.grpc)
        )
    return out


def _check_regexes(rule: RouteRule, where: str, unsupported: list[str]) -> None:
    for index, match in enumerate(rule.matches):
        values = [match.path] if match.path else []
        values.extend(match.headers)
        values.extend(match.query)
        for value in values:
            if value.type != "RegularExpression":
                continue
            problem = re2_problem(value.value) if value.value else "an empty regular expression"
            if problem is not None:
                unsupported.append(f"{where}.matches[{index}]: {problem}")


_CONTROL = ("\0", "\r", "\n")


def _check_envoy_values(rule: RouteRule, where: str, unsupported: list[str]) -> None:
    """What the CRDs allow but Envoy's own rules refuse (a NACK of the whole
    route table): control characters in header values and rewritten paths,
    request headers Envoy will not modify (host), and a prefix with "?"
    (Envoy's path_separated_prefix pattern)."""
    for index, match in enumerate(rule.matches):
        if match.path and match.path.type == "PathPrefix" and "?" in match.path.value:
            unsupported.append(f"{where}.matches[{index}].path: a prefix with '?'")
    filters = [(f"{where}.filters[{i}]", f) for i, f in enumerate(rule.filters)]
    for backend in rule.backends:
        filters.extend((f"{backend.field}.filters[{i}]", f) for i, f in enumerate(backend.filters))
    for path, f in filters:
        for name, value in (
            *_modifier_values(f.request_headers),
            *_modifier_values(f.response_headers),
        ):
            if any(c in value for c in _CONTROL):
                unsupported.append(f"{path}: header {name!r} value has a control character")
        request = f.request_headers
        names = (
            [n for n, _ in (*request.set, *request.add)] + list(request.remove) if request else []
        )
        if any(n.lower() == "host" for n in names):
            unsupported.append(f"{path}: Envoy does not let a route modify the Host header")
        rewritten = [m.path for m in (f.redirect, f.rewrite) if m is not None and m.path]
        if any(c in p.value for p in rewritten for c in _CONTROL):
            unsupported.append(f"{path}: the path has a control character")


def _modifier_values(modifier: HeaderModifier | None) -> tuple[tuple[str, str], ...]:
    return (*modifier.set, *modifier.add) if modifier is not None else ()


def _backend(
    route: Route,
    ref: BackendRef,
    services: Mapping[ServiceName, Service],
    grants: Sequence[ReferenceGrant],
    parents: set[ServiceName],
    unresolved: list[Condition],
) -> ResolvedBackend:
    def fail(reason: str, message: str) -> ResolvedBackend:
        unresolved.append(Condition("ResolvedRefs", False, reason, f"{ref.field}: {message}"))
        return ResolvedBackend(ref, None, ref.port)

    if ref.group != "" or ref.kind != "Service":
        return fail("InvalidKind", f"backend kind {ref.group}/{ref.kind} is not supported")
    name = ServiceName(ref.namespace, ref.name)
    if ref.namespace != route.ref.namespace and name not in parents:
        source = GrantFrom(GATEWAY_GROUP, route.ref.kind.value, route.ref.namespace)
        target = GrantTo("", "Service", ref.name)
        if not any(g.ref.namespace == ref.namespace and g.permits(source, target) for g in grants):
            return fail("RefNotPermitted", f"no ReferenceGrant in {ref.namespace} allows {name}")
    service = services.get(name)
    if service is None:
        return fail("BackendNotFound", f"Service {name} does not exist")
    if not any(p.port == ref.port and p.protocol == "TCP" for p in service.ports):
        return fail("BackendNotFound", f"Service {name} has no TCP port {ref.port}")
    return ResolvedBackend(ref, name, ref.port)


def _entries(rules: Iterable[AttachedRule]) -> Iterable[RouteEntry]:
    for rule in rules:
        for index, match in enumerate(rule.rule.matches):
            yield RouteEntry(match, index, rule)


def _precedence(entry: RouteEntry, age: Mapping[ObjectRef, tuple[str, str, str]]) -> tuple:  # type: ignore[type-arg]
    match = entry.match
    path = match.path
    if path is None or path.type == "PathPrefix":
        path_rank, length = 1, -len(path.value.rstrip("/") if path else "")
    elif path.type == "Exact":
        path_rank, length = 0, -len(path.value)
    else:  # RegularExpression: implementation-specific; after every Exact and prefix
        path_rank, length = 2, -len(path.value)
    return (
        path_rank,
        length,
        match.method is None,
        -len(match.headers),
        -len(match.query),
        age[entry.rule.route],
        entry.rule.rule.index,
        entry.match_index,
    )


def _tables(
    scopes: dict[tuple[ServiceName, int], dict[str, list[RouteEntry]]],
    owners: dict[tuple[ServiceName, int], list[ObjectRef]],
    age: Mapping[ObjectRef, tuple[str, str, str]],
    memo: TableMemo,
) -> tuple[dict[tuple[ServiceName, int], ServiceRoutes], dict[ObjectRef, list[str]]]:
    shadowed: dict[ObjectRef, list[str]] = {}
    tables = {}
    for key in sorted(scopes):
        # Identity of the entries (shared from the routes' memoized results)
        # and the owners: a port nothing touched keeps its table and notes.
        inputs = tuple(id(e) for scope in sorted(scopes[key]) for e in scopes[key][scope])
        known = memo.get(key)
        if known is not None and known[0] == (inputs, tuple(owners[key])):
            tables[key] = known[1]
            for ref, note in known[2]:
                shadowed.setdefault(ref, []).append(note)
            continue
        notes: dict[ObjectRef, list[str]] = {}
        ordered: dict[str, tuple[RouteEntry, ...]] = {}
        for scope, entries in sorted(scopes[key].items()):
            entries.sort(key=lambda e: _precedence(e, age))
            ordered[scope] = tuple(entries)
            _note_shadowed(entries, notes)
        consumers = tuple((s, e) for s, e in ordered.items() if s)
        tables[key] = ServiceRoutes(
            key[0], key[1], ordered.get("", ()), consumers, tuple(dict.fromkeys(owners[key]))
        )
        flat = tuple((ref, note) for ref, found in notes.items() for note in found)
        memo[key] = ((inputs, tuple(owners[key])), tables[key], flat)
        for ref, note in flat:
            shadowed.setdefault(ref, []).append(note)
    for gone in set(memo) - set(scopes):
        del memo[gone]
    return tables, shadowed


def _note_shadowed(entries: Sequence[RouteEntry], shadowed: dict[ObjectRef, list[str]]) -> None:
    """Identical matches of different routes: the first in order wins."""
    first: dict[RouteMatch, ObjectRef] = {}
    for entry in entries:
        winner = first.setdefault(entry.match, entry.rule.route)
        if winner != entry.rule.route:
            where = f"spec.rules[{entry.rule.rule.index}].matches[{entry.match_index}]"
            shadowed.setdefault(entry.rule.route, []).append(
                f"{where} is also matched by the older {winner}, which wins"
            )


def _with_conflicts(status: RouteStatus, notes: Sequence[str]) -> RouteStatus:
    if not notes:
        return status
    parents = []
    for parent in status.parents:
        conditions = tuple(
            Condition(c.type, c.status, c.reason, f"{c.message}; {'; '.join(sorted(set(notes)))}")
            if c.type == "Accepted" and c.status
            else c
            for c in parent.conditions
        )
        parents.append(ParentStatus(parent.parent, conditions))
    return RouteStatus(status.ref, status.generation, tuple(parents))
