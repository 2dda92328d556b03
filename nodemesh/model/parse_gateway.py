"""Parsing of the Gateway API kinds GAMMA uses: HTTPRoute, GRPCRoute (v1) and
ReferenceGrant (v1beta1). Called through `nodemesh.model.parse`.

The checks here are the CRDs' own (Gateway API v1.6.3, standard channel):
OpenAPI enums, bounds and patterns, and the CEL rules, each raising the
message the API server would. So a file-source object is rejected exactly
when `kubectl apply` would reject it, and objects from the API server always
pass. `tests/model/test_parse_gateway_crd.py` checks the constants below
against the vendored CRDs. What is valid but unsupported (CORS, ExtensionRef,
a regex RE2 rejects) is not a parse error: it becomes a route status
condition (`gamma.py`).
"""

from __future__ import annotations

import re

from nodemesh.model.errors import ParseError
from nodemesh.model.fields import Fields
from nodemesh.model.objects import ObjectRef, pairs
from nodemesh.model.routes import (
    BackendRef,
    GrantFrom,
    GrantTo,
    HeaderModifier,
    Mirror,
    ParentRef,
    PathModifier,
    Redirect,
    ReferenceGrant,
    Retry,
    Rewrite,
    Route,
    RouteFilter,
    RouteMatch,
    RouteRule,
    ValueMatch,
)

GROUP = "gateway.networking.k8s.io"
PATH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
VALUE_TYPES = ("Exact", "RegularExpression")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
HTTP_FILTERS = (
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
    "ExtensionRef",
    "CORS",
)
GRPC_FILTERS = ("ResponseHeaderModifier", "RequestHeaderModifier", "RequestMirror", "ExtensionRef")
# Filter types that may appear at most once per rule (the CEL rules).
ONCE = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "CORS")
SCHEMES = ("http", "https")
REDIRECT_CODES = (301, 302, 303, 307, 308)
PATH_MODIFIERS = ("ReplaceFullPath", "ReplacePrefixMatch")
MAX_WEIGHT = 1_000_000
MAX_PARENTS = 32
MAX_RULES = 16
MAX_MATCHES = 64
MAX_TOTAL_MATCHES = 128
MAX_HEADERS = 16
MAX_FILTERS = 16
MAX_BACKENDS = 16
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_SECTION = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_GRPC_SERVICE = re.compile(r"^\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$", re.IGNORECASE)
_GRPC_METHOD = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")
_MS = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
_BAD_PATH_PARTS = ("//", "/./", "/../", "%2f", "%2F", "#")
_BAD_PATH_ENDS = ("/..", "/.")


def route(ref: ObjectRef, top: Fields, created: str, generation: int) -> Route:
    spec = top.req_map("spec")
    grpc = ref.kind.value == "GRPCRoute"
    parents = tuple(_parent(p) for p in _limited(spec, "parentRefs", MAX_PARENTS))
    _unique_parents(spec, parents)
    hostnames = spec.strings("hostnames")
    if len(hostnames) > 16:
        raise spec.error("hostnames", "must have at most 16 items")
    raw_rules = list(_limited(spec, "rules", MAX_RULES))
    rules = tuple(_rule(r, i, grpc) for i, r in enumerate(raw_rules))
    if not raw_rules and not grpc:
        # The CRD's default: one rule matching every path, with no backends.
        rules = (RouteRule(0, "", (RouteMatch(ValueMatch("PathPrefix", "/")),), (), ()),)
    if sum(len(r.matches) for r in rules) > MAX_TOTAL_MATCHES:
        raise spec.error(
            "rules", f"the total number of matches must be at most {MAX_TOTAL_MATCHES}"
        )
    names = [r.name for r in rules if r.name]
    if len(names) != len(set(names)):
        raise spec.error("rules", "Rule name must be unique within the route")
    return Route(ref, generation, created, parents, rules, hostnames)


def reference_grant(ref: ObjectRef, top: Fields) -> ReferenceGrant:
    spec = top.req_map("spec")
    sources = tuple(
        GrantFrom(_group(f), f.req_str("kind"), f.req_str("namespace"))
        for f in _limited(spec, "from", 16, minimum=1)
    )
    targets = tuple(
        GrantTo(_group(t), t.req_str("kind"), t.opt_str("name") or None)
        for t in _limited(spec, "to", 16, minimum=1)
    )
    return ReferenceGrant(ref, sources, targets)


def _group(fields: Fields) -> str:
    """`group` is required in a ReferenceGrant, and "" is the core group."""
    if "group" not in fields.data:
        raise fields.error("group", "is required")
    return fields.opt_str("group", "") or ""


def _limited(fields: Fields, key: str, limit: int, minimum: int = 0) -> list[Fields]:
    found = list(fields.maps(key))
    if len(found) > limit:
        raise fields.error(key, f"must have at most {limit} items")
    if len(found) < minimum:
        raise fields.error(key, f"must have at least {minimum} item")
    return found


def _parent(entry: Fields) -> ParentRef:
    name = entry.req_str("name")
    if len(name) > 253:
        raise entry.error("name", "must be at most 253 characters")
    section = entry.opt_str("sectionName")
    if section is not None and (len(section) > 253 or not _SECTION.match(section)):
        raise entry.error("sectionName", f"{section!r} is not a valid section name")
    assert entry.ref is not None
    return ParentRef(
        # An explicit "" is the core group (a Service); only an absent group defaults.
        group=GROUP if "group" not in entry.data else entry.opt_str("group", "") or "",
        kind=entry.opt_str("kind", "Gateway") or "Gateway",
        namespace=entry.opt_str("namespace") or entry.ref.namespace,
        name=name,
        port=entry.port("port", required=False),
        section_name=section,
    )


def _unique_parents(spec: Fields, parents: tuple[ParentRef, ...]) -> None:
    """The CEL rules on parentRefs: sectionName is needed, and unique, when
    several refs name the same parent."""
    for i, a in enumerate(parents):
        for b in parents[i + 1 :]:
            same = (a.group, a.kind, a.namespace, a.name) == (b.group, b.kind, b.namespace, b.name)
            if not same:
                continue
            if not (a.section_name or b.section_name) and a.port is None and b.port is None:
                raise spec.error(
                    "parentRefs",
                    "sectionName or port must be specified when parentRefs includes 2 or "
                    "more references to the same parent",
                )
            if (a.section_name, a.port) == (b.section_name, b.port):
                raise spec.error(
                    "parentRefs",
                    "sectionName or port must be unique when parentRefs includes 2 or more "
                    "references to the same parent",
                )


def _rule(rule: Fields, index: int, grpc: bool) -> RouteRule:
    name = rule.opt_str("name", "") or ""
    if name and (len(name) > 253 or not _SECTION.match(name)):
        raise rule.error("name", f"{name!r} is not a valid rule name")
    raw_matches = _limited(rule, "matches", MAX_MATCHES)
    if grpc:
        matches = tuple(_grpc_match(m) for m in raw_matches) or (RouteMatch(),)
    else:
        matches = tuple(_http_match(m) for m in raw_matches)
        matches = matches or (RouteMatch(ValueMatch("PathPrefix", "/")),)
    filters = _filters(rule, grpc)
    backends = tuple(_backend(b, grpc) for b in _limited(rule, "backendRefs", MAX_BACKENDS))
    _rule_cel(rule, matches, filters, bool(backends))
    request, backend = _timeouts(rule)
    return RouteRule(
        index=index,
        name=name,
        matches=matches,
        filters=filters,
        backends=backends,
        request_timeout_ms=request,
        backend_timeout_ms=backend,
        retry=_retry(rule),
    )


def _rule_cel(
    rule: Fields, matches: tuple[RouteMatch, ...], filters: tuple[RouteFilter, ...], backends: bool
) -> None:
    if backends and any(f.type == "RequestRedirect" for f in filters):
        raise rule.error(
            "filters", "RequestRedirect filter must not be used together with backendRefs"
        )
    for kind in ("RequestRedirect", "URLRewrite"):
        prefix = [
            f
            for f in filters
            if f.type == kind
            and ((f.redirect and f.redirect.path) or (f.rewrite and f.rewrite.path))
            and _modifier(f).type == "ReplacePrefixMatch"
        ]
        if prefix and (
            len(matches) != 1 or matches[0].path is None or matches[0].path.type != "PathPrefix"
        ):
            raise rule.error(
                "filters",
                f"When using {kind} filter with path.replacePrefixMatch, exactly one "
                "PathPrefix match must be specified",
            )


def _modifier(f: RouteFilter) -> PathModifier:
    path = f.redirect.path if f.redirect else f.rewrite.path if f.rewrite else None
    assert path is not None
    return path


def _http_match(entry: Fields) -> RouteMatch:
    path = None
    raw_path = entry.opt_map("path")
    if raw_path is not None:
        kind = _enum(raw_path, "type", PATH_TYPES, "PathPrefix")
        value = raw_path.opt_str("value", "/") or ""
        if len(value) > 1024:
            raise raw_path.error("value", "must be at most 1024 characters")
        _path_cel(raw_path, kind, value)
        path = ValueMatch(kind, value)
    method = None
    if entry.has("method"):
        method = _enum(entry, "method", METHODS, None)
    return RouteMatch(
        path=path,
        headers=_value_matches(entry, "headers", 4096, header=True),
        query=_value_matches(entry, "queryParams", 1024, header=False),
        method=method,
    )


def _path_cel(path: Fields, kind: str, value: str) -> None:
    if kind == "RegularExpression":
        return
    if not value.startswith("/"):
        raise path.error("value", "value must be an absolute path and start with '/'")
    for part in _BAD_PATH_PARTS:
        if part in value:
            raise path.error("value", f"must not contain {part!r}")
    for end in _BAD_PATH_ENDS:
        if value.endswith(end):
            raise path.error("value", f"must not end with {end!r}")


def _value_matches(entry: Fields, key: str, max_value: int, header: bool) -> tuple[ValueMatch, ...]:
    out = []
    seen: set[str] = set()
    for item in _limited(entry, key, MAX_HEADERS):
        name = item.req_str("name")
        if len(name) > 256 or not _HEADER_NAME.match(name):
            raise item.error("name", f"{name!r} is not a valid name")
        value = item.data.get("value")
        if not isinstance(value, str) or not value:
            raise item.error("value", "is required")
        if len(value) > max_value:
            raise item.error("value", f"must be at most {max_value} characters")
        # Header names compare case-insensitively, query parameter names exactly.
        folded = name.lower() if header else name
        if folded in seen:
            raise item.error("name", f"{name!r} is matched twice; names must be unique")
        seen.add(folded)
        out.append(ValueMatch(_enum(item, "type", VALUE_TYPES, "Exact"), value, name))
    return tuple(out)


def _grpc_match(entry: Fields) -> RouteMatch:
    path = None
    method = entry.opt_map("method")
    if method is not None:
        kind = _enum(method, "type", VALUE_TYPES, "Exact")
        service = method.opt_str("service") or ""
        name = method.opt_str("method") or ""
        if not service and not name:
            raise method.error(None, "One or both of 'service' or 'method' must be specified")
        if kind == "Exact":
            if service and not _GRPC_SERVICE.match(service):
                raise method.error("service", f"{service!r} is not a valid gRPC service name")
            if name and not _GRPC_METHOD.match(name):
                raise method.error("method", f"{name!r} is not a valid gRPC method name")
            service_re = re.escape(service) if service else "[^/]+"
            method_re = re.escape(name) if name else "[^/]+"
        else:
            service_re = service or "[^/]+"
            method_re = name or "[^/]+"
        if service and name and kind == "Exact":
            path = ValueMatch("Exact", f"/{service}/{name}")
        else:
            path = ValueMatch("RegularExpression", f"/({service_re})/({method_re})")
    return RouteMatch(path=path, headers=_value_matches(entry, "headers", 4096, header=True))


def _filters(rule: Fields, grpc: bool) -> tuple[RouteFilter, ...]:
    allowed = GRPC_FILTERS if grpc else HTTP_FILTERS
    out: list[RouteFilter] = []
    for item in _limited(rule, "filters", MAX_FILTERS):
        kind = _enum(item, "type", allowed, None)
        assert kind is not None
        if kind in ONCE and any(f.type == kind for f in out):
            raise rule.error("filters", f"{kind} filter cannot be repeated")
        out.append(_filter(item, kind))
    if any(f.type == "RequestRedirect" for f in out) and any(f.type == "URLRewrite" for f in out):
        raise rule.error(
            "filters",
            "May specify either httpRouteFilterRequestRedirect or "
            "httpRouteFilterRequestRewrite, but not both",
        )
    return tuple(out)


_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
}


def _filter(item: Fields, kind: str) -> RouteFilter:
    for other, key in _FIELDS.items():
        if other != kind and item.has(key):
            raise item.error(key, f"filter.{key} must be nil if the filter.type is not {other}")
    body = item.opt_map(_FIELDS[kind])
    if body is None:
        raise item.error(
            _FIELDS[kind], f"filter.{_FIELDS[kind]} must be specified for {kind} filter.type"
        )
    if kind == "RequestHeaderModifier":
        return RouteFilter(kind, request_headers=_header_modifier(body))
    if kind == "ResponseHeaderModifier":
        return RouteFilter(kind, response_headers=_header_modifier(body))
    if kind == "RequestRedirect":
        return RouteFilter(kind, redirect=_redirect(body))
    if kind == "URLRewrite":
        return RouteFilter(kind, rewrite=Rewrite(body.opt_str("hostname"), _path_modifier(body)))
    if kind == "RequestMirror":
        return RouteFilter(kind, mirror=_mirror(body))
    return RouteFilter(kind)  # ExtensionRef, CORS: valid, unsupported (status says so)


def _header_modifier(body: Fields) -> HeaderModifier:
    def pairs_of(key: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in _limited(body, key, MAX_HEADERS):
            name = item.req_str("name")
            if not _HEADER_NAME.match(name):
                raise item.error("name", f"{name!r} is not a valid header name")
            if name.lower() in (n.lower() for n in out):
                raise body.error(key, f"header {name!r} appears twice")
            out[name] = item.opt_str("value", "") or ""
        return out

    remove = body.strings("remove")
    if len(remove) > MAX_HEADERS:
        raise body.error("remove", f"must have at most {MAX_HEADERS} items")
    return HeaderModifier(pairs(pairs_of("set")), pairs(pairs_of("add")), remove)


def _path_modifier(body: Fields) -> PathModifier | None:
    path = body.opt_map("path")
    if path is None:
        return None
    kind = _enum(path, "type", PATH_MODIFIERS, None)
    key = "replaceFullPath" if kind == "ReplaceFullPath" else "replacePrefixMatch"
    other = "replacePrefixMatch" if kind == "ReplaceFullPath" else "replaceFullPath"
    if path.has(other):
        raise path.error(other, f"{other} must not be specified when type is not {kind[:11]}...")
    if not path.has(key):
        raise path.error(key, f"{key} must be specified when type is set to '{kind}'")
    value = path.req_str(key)
    if len(value) > 1024:
        raise path.error(key, "must be at most 1024 characters")
    assert kind is not None
    return PathModifier(kind, value)


def _redirect(body: Fields) -> Redirect:
    scheme = _enum(body, "scheme", SCHEMES, None) if body.has("scheme") else None
    code = body.opt_int("statusCode", 302)
    if code not in REDIRECT_CODES:
        raise body.error("statusCode", f"must be one of {', '.join(map(str, REDIRECT_CODES))}")
    return Redirect(
        scheme=scheme,
        hostname=body.opt_str("hostname"),
        path=_path_modifier(body),
        port=body.port("port", required=False),
        status_code=code or 302,
    )


def _mirror(body: Fields) -> Mirror:
    backend = _backend(body.req_map("backendRef"), False, weighted=False)
    if body.has("percent") and body.has("fraction"):
        raise body.error(
            None, "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter"
        )
    percent = body.opt_int("percent")
    if percent is not None:
        if not 0 <= percent <= 100:
            raise body.error("percent", "must be between 0 and 100")
        return Mirror(backend, percent, 100)
    fraction = body.opt_map("fraction")
    if fraction is not None:
        numerator = fraction.req_int("numerator")
        denominator = fraction.opt_int("denominator", 100) or 0
        if numerator < 0 or denominator < 1:
            raise fraction.error(None, "numerator must be >= 0 and denominator >= 1")
        if numerator > denominator:
            raise fraction.error(None, "numerator must be less than or equal to denominator")
        return Mirror(backend, numerator, denominator)
    return Mirror(backend)


def _backend(entry: Fields, grpc: bool, weighted: bool = True) -> BackendRef:
    group = entry.opt_str("group", "") or ""
    kind = entry.opt_str("kind", "Service") or "Service"
    name = entry.req_str("name")
    port = entry.port("port", required=False)
    if group == "" and kind == "Service" and port is None:
        raise entry.error("port", "Must have port for Service reference")
    weight = entry.opt_int("weight", 1) if weighted else 1
    assert weight is not None
    if not 0 <= weight <= MAX_WEIGHT:
        raise entry.error("weight", f"{weight} is out of range 0-{MAX_WEIGHT}")
    assert entry.ref is not None
    namespace = entry.opt_str("namespace") or entry.ref.namespace
    filters = _filters(entry, grpc) if weighted else ()
    return BackendRef(group, kind, name, namespace, port, weight, entry.path, filters)


def _timeouts(rule: Fields) -> tuple[int | None, int | None]:
    timeouts = rule.opt_map("timeouts")
    if timeouts is None:
        return None, None
    request = _duration(timeouts, "request")
    backend = _duration(timeouts, "backendRequest")
    if request and backend is not None and backend > request:
        raise timeouts.error(None, "backendRequest timeout cannot be longer than request timeout")
    return request, backend


def _duration(fields: Fields, key: str) -> int | None:
    raw = fields.opt_str(key)
    if raw is None:
        return None
    if not _DURATION.match(raw):
        raise fields.error(key, f"{raw!r} is not a Gateway API duration (e.g. 1h2m3s4ms)")
    return sum(int(n) * _MS[unit] for n, unit in _DURATION_PART.findall(raw))


def _retry(rule: Fields) -> Retry | None:
    """GEP-1731 `retry`: an experimental-channel field in v1.6.3 (standard from v1.7)."""
    retry = rule.opt_map("retry")
    if retry is None:
        return None
    codes = []
    for path, code in retry.items("codes"):
        if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
            raise ParseError(retry.ref, path, f"{code!r} is not an HTTP status code 400-599")
        codes.append(code)
    attempts = retry.opt_int("attempts")
    if attempts is not None and attempts < 0:
        raise retry.error("attempts", "must not be negative")
    return Retry(tuple(codes), attempts, _duration(retry, "backoff"))


def _enum(fields: Fields, key: str, allowed: tuple[str, ...], default: str | None) -> str:
    value = fields.opt_str(key, default)
    if value not in allowed:
        quoted = ", ".join(f'"{v}"' for v in allowed)
        raise fields.error(key, f"Unsupported value: {value!r}: supported values: {quoted}")
    assert value is not None
    return value
