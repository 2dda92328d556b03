"""Gateway API routes attached to Services (GAMMA) as model values.

HTTPRoute and GRPCRoute (gateway.networking.k8s.io/v1) and ReferenceGrant
(v1beta1), as parsed by `parse_gateway`: already checked against the CRD's
OpenAPI and CEL rules, with defaults applied, so consumers never re-read the
raw object. A GRPCRoute becomes the same `Route` as an HTTPRoute (its
service/method matches are paths to HTTP/2 requests); `grpc` tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodemesh.model.objects import ObjectRef, Pairs


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A path, header or query match: `type` is Exact, PathPrefix or RegularExpression."""

    type: str
    value: str
    name: str = ""  # header or query parameter name ("" for a path)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """One `matches[]` entry; all present parts must match."""

    path: ValueMatch | None = None
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    set: Pairs = ()
    add: Pairs = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathModifier:
    """`type` is ReplaceFullPath or ReplacePrefixMatch."""

    type: str
    value: str


@dataclass(frozen=True, slots=True)
class Redirect:
    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class Rewrite:
    hostname: str | None = None
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True)
class BackendRef:
    """A backendRefs entry (or a mirror's backend). `namespace` is already
    defaulted to the route's."""

    group: str
    kind: str
    name: str
    namespace: str
    port: int | None
    weight: int = 1
    field: str = ""  # where it is written, for status messages
    # backendRefs[].filters: header modifiers are applied for this backend only.
    filters: tuple[RouteFilter, ...] = ()


@dataclass(frozen=True, slots=True)
class Mirror:
    backend: BackendRef
    numerator: int = 100  # percent, or fraction numerator over `denominator`
    denominator: int = 100


@dataclass(frozen=True, slots=True)
class RouteFilter:
    """One filter; exactly the part its `type` names is set."""

    type: str
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    mirror: Mirror | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """GEP-1731 (experimental channel in v1.6.3): `backoff` in milliseconds."""

    codes: tuple[int, ...] = ()
    attempts: int | None = None
    backoff_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RouteRule:
    index: int
    name: str
    matches: tuple[RouteMatch, ...]
    filters: tuple[RouteFilter, ...]
    backends: tuple[BackendRef, ...]
    request_timeout_ms: int | None = None  # 0: no timeout
    backend_timeout_ms: int | None = None
    retry: Retry | None = None


@dataclass(frozen=True, slots=True)
class ParentRef:
    group: str
    kind: str
    namespace: str
    name: str
    port: int | None = None
    section_name: str | None = None

    def __str__(self) -> str:
        where = f"{self.kind} {self.namespace}/{self.name}"
        return f"{where}:{self.port}" if self.port else where


@dataclass(frozen=True, slots=True)
class Route:
    """An HTTPRoute or GRPCRoute."""

    ref: ObjectRef
    generation: int
    creation_timestamp: str
    parents: tuple[ParentRef, ...]
    rules: tuple[RouteRule, ...]
    hostnames: tuple[str, ...] = ()

    @property
    def grpc(self) -> bool:
        return self.ref.kind.value == "GRPCRoute"


@dataclass(frozen=True, slots=True)
class GrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, slots=True)
class GrantTo:
    group: str
    kind: str
    name: str | None = None  # None: every object of that kind


@dataclass(frozen=True, slots=True)
class ReferenceGrant:
    ref: ObjectRef
    sources: tuple[GrantFrom, ...]
    targets: tuple[GrantTo, ...]

    def permits(self, source: GrantFrom, target: GrantTo) -> bool:
        """Whether this grant lets `source` refer to `target` (in the grant's namespace)."""
        return source in self.sources and any(
            t.group == target.group and t.kind == target.kind and t.name in (None, target.name)
            for t in self.targets
        )
