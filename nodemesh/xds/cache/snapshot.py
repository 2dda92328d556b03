"""Immutable xDS snapshots: every resource a node (or a group) should hold.

A snapshot is built once from the translator's output
(`Mapping[type_url, Mapping[name, Message]]`) and never changes afterwards;
streams read it concurrently without locks. Resources unchanged since the
previous snapshot (same message object, or same bytes) reuse the previous
encoding, so a one-endpoint change encodes one resource.
"""

from __future__ import annotations

import itertools
import operator
import weakref
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import DecodeError, Message

from nodemesh.xds.cache.errors import SnapshotError
from nodemesh.xds.cache.names import SharedNames
from nodemesh.xds.cache.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    EncodedResource,
    content_hash,
    is_valid_type_url,
)
from nodemesh.xds.vocab import TYPE_PREFIX

_HCM_TYPE = TYPE_PREFIX + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
_serials = itertools.count(1)
# How many ancestors a snapshot remembers its change set against; streams
# further behind than this fall back to a full diff.
_CHANGE_HISTORY = 8
_MAX_CHANGE_ENTRIES = 64

ChangeSet = Mapping[str, frozenset[str]]


def view_version(resources: Iterable[EncodedResource]) -> str:
    """Content version of a set of resources: hash of the sorted (name,
    version) pairs. Any replica computes the same string for the same set."""
    pairs = sorted((r.name, r.version) for r in resources)
    return content_hash(f"{name}\0{version}".encode() for name, version in pairs)


@dataclass(frozen=True, slots=True)
class NamedView:
    """A named subscription's share of one snapshot (read-only)."""

    resources: Mapping[str, EncodedResource]
    versions: Mapping[str, str]
    version: str
    body: bytes


@dataclass(frozen=True, slots=True)
class _ConsistencyBase:
    """What the snapshot a new one was built from found, and on what inputs.
    Dropped once the new snapshot's own findings exist (no chains)."""

    listeners: Mapping[str, EncodedResource] | None
    routes: Mapping[str, EncodedResource] | None
    clusters: Mapping[str, EncodedResource] | None
    endpoints: Mapping[str, EncodedResource] | None
    listener_issues: tuple[str, ...] | None
    cluster_issues: tuple[str, ...] | None


def _same(
    now: tuple[Mapping[str, EncodedResource] | None, Mapping[str, EncodedResource] | None],
    then: tuple[Mapping[str, EncodedResource] | None, Mapping[str, EncodedResource] | None],
) -> bool:
    """The referring type is the very same mapping, and the referred-to type
    has the same names (its contents do not matter for consistency)."""
    (referrers, targets), (old_referrers, old_targets) = now, then
    if referrers is not old_referrers:
        return False
    if targets is old_targets:
        return True
    if targets is None or old_targets is None:
        return False
    return targets.keys() == old_targets.keys()


class Snapshot:
    """All resources of one node (or group) at one model version.

    Some resources may be served by name only (`named_only`): a wildcard
    subscription gets `wildcard(type_url)`, everything else of the type minus
    those (proxyless gRPC targets are not for the node Envoy's wildcard LDS).

    Contract: treat every mapping returned here as read-only; they are shared
    by every stream.
    """

    def __init__(
        self,
        label: str,
        resources: Mapping[str, dict[str, EncodedResource]],
        named_only: Mapping[str, AbstractSet[str]] | None = None,
    ) -> None:
        self.label = label
        self.named_only: Mapping[str, frozenset[str]] = MappingProxyType(
            {t: frozenset(names) for t, names in (named_only or {}).items() if names}
        )
        self._wildcard: dict[str, Mapping[str, EncodedResource]] = {}
        self.serial = next(_serials)
        # Read-only views, no copies: the snapshot owns the mappings it is
        # given (and shares them with later snapshots where nothing changed).
        self._owned = resources
        self._messages: dict[str, list[Message]] = {}
        self.resources: Mapping[str, Mapping[str, EncodedResource]] = MappingProxyType(
            {t: MappingProxyType(by_name) for t, by_name in resources.items()}
        )
        self._type_versions: dict[str, str] = {}
        self._wildcard_bodies: dict[str, bytes] = {}
        self._versions: dict[str, Mapping[str, str]] = {}
        # type URL -> name set -> view; weak on the set, so a view dies with
        # the last stream subscribing to exactly those names.
        self._named: dict[str, weakref.WeakKeyDictionary[SharedNames, NamedView]] = {}
        # ancestor serial -> names changed (added, modified or removed) per type
        self._changes: dict[int, dict[str, frozenset[str]]] = {}
        self._issues: tuple[str, ...] | None = None
        self._listener_findings: tuple[str, ...] | None = None
        self._cluster_findings: tuple[str, ...] | None = None
        self._base: _ConsistencyBase | None = None
        self._linked: set[int] = set()

    @classmethod
    def build(
        cls,
        resources: Mapping[str, Mapping[str, Message]],
        label: str,
        previous: Snapshot | None = None,
        named_only: Mapping[str, AbstractSet[str]] | None = None,
    ) -> Snapshot:
        """Encode `resources` once. Raises SnapshotError naming the type URL
        and resource on bad input; `previous` lets unchanged resources reuse
        their encoding.

        Contract: a message handed to a snapshot is never mutated afterwards.
        A message object that is identical (`is`) to the previous snapshot's
        is taken as unchanged without re-encoding it."""
        encoded: dict[str, dict[str, EncodedResource]] = {}
        changes: dict[str, frozenset[str]] = {}
        messages: dict[str, list[Message]] = {}
        for type_url, by_name in resources.items():
            if not is_valid_type_url(type_url):
                raise SnapshotError(f"snapshot {label!r}: invalid type URL {type_url!r}")
            messages[type_url] = list(by_name.values())
            if previous is not None and previous._unchanged(type_url, by_name, messages[type_url]):
                # Same names, same message objects: share the whole type.
                encoded[type_url] = previous._owned[type_url]
                continue
            old = previous.get(type_url) if previous is not None else _EMPTY
            encoded[type_url], changed = _encode_type(type_url, by_name, old, label)
            changed.update(old.keys() - by_name.keys())
            if changed:
                changes[type_url] = frozenset(changed)
        snapshot = cls(label, encoded, named_only)
        snapshot._messages = messages
        if previous is not None:
            snapshot._share_wildcard_views(previous)
            _add_visibility_changes(changes, previous, snapshot)
        if previous is not None:
            snapshot._base = _ConsistencyBase(
                listeners=previous._owned.get(LISTENER),
                routes=previous._owned.get(ROUTE),
                clusters=previous._owned.get(CLUSTER),
                endpoints=previous._owned.get(ENDPOINT),
                listener_issues=previous._listener_findings,
                cluster_issues=previous._cluster_findings,
            )
        if previous is not None:
            for type_url in previous.resources.keys() - encoded.keys():
                changes[type_url] = frozenset(previous.get(type_url))
            # What changed since `previous` is known now; link() reuses it.
            snapshot._changes[previous.serial] = changes
        return snapshot

    def _unchanged(
        self, type_url: str, by_name: Mapping[str, Message], messages: list[Message]
    ) -> bool:
        """True when `by_name` holds exactly this snapshot's message objects
        under the same names, in the same order (scanned at C speed)."""
        owned = self._owned.get(type_url)
        mine = self._messages.get(type_url)
        if owned is None or mine is None or len(owned) != len(by_name):
            return False
        return all(map(operator.is_, messages, mine)) and list(by_name) == list(owned)

    def _share_wildcard_views(self, previous: Snapshot) -> None:
        """Reuse the previous snapshot's wildcard views of types that did not
        change at all (one endpoint change keeps every Cluster)."""
        for type_url, view in previous._wildcard.items():
            if self._owned.get(type_url) is previous._owned.get(type_url) and self.named_only.get(
                type_url
            ) == previous.named_only.get(type_url):
                self._wildcard[type_url] = view

    def wildcard(self, type_url: str) -> Mapping[str, EncodedResource]:
        """What a wildcard subscription to this type holds: every resource
        but those served by name only."""
        view = self._wildcard.get(type_url)
        if view is None:
            hidden = self.named_only.get(type_url)
            everything = self.get(type_url)
            if not hidden:
                view = everything
            else:
                view = MappingProxyType({n: r for n, r in everything.items() if n not in hidden})
            self._wildcard[type_url] = view
        return view

    def wildcard_and(self, type_url: str, names: Iterable[str]) -> Mapping[str, EncodedResource]:
        """What a wildcard subscription that also names `names` holds: the
        wildcard view plus those of the names served by name only."""
        view = self.wildcard(type_url)
        everything = self.get(type_url)
        named = {n: everything[n] for n in names if n in everything and n not in view}
        return {**view, **named} if named else view

    def served(self, type_url: str, names: Iterable[str]) -> Mapping[str, EncodedResource]:
        """The wildcard view plus `names` (those that exist): what a client
        subscribed to the wildcard and to `names` is served."""
        view = self.wildcard(type_url)
        everything = self.get(type_url)
        extra = {n: everything[n] for n in names if n not in view and n in everything}
        return {**view, **extra} if extra else view

    def endpoint_names(self, clusters: Iterable[str]) -> set[str]:
        """The EDS resource names the given (existing) EDS clusters use."""
        found = self.get(CLUSTER)
        names: set[str] = set()
        for cluster in clusters:
            res = found.get(cluster)
            if res is not None:
                names.update(_references(res, _cluster_eds_names))
        return names

    def get(self, type_url: str) -> Mapping[str, EncodedResource]:
        """Resources of one type by name (empty mapping when none)."""
        return self.resources.get(type_url, _EMPTY)

    def type_version(self, type_url: str) -> str:
        """Content version of the wildcard view of this type (the SotW
        wildcard version_info)."""
        version = self._type_versions.get(type_url)
        if version is None:
            version = view_version(self.wildcard(type_url).values())
            self._type_versions[type_url] = version
        return version

    def versions(self, type_url: str) -> Mapping[str, str]:
        """name -> version of the wildcard view of this type, built once and
        shared (wildcard streams keep a reference instead of a copy)."""
        versions = self._versions.get(type_url)
        if versions is None:
            versions = MappingProxyType({n: r.version for n, r in self.wildcard(type_url).items()})
            self._versions[type_url] = versions
        return versions

    def named_view(self, type_url: str, names: frozenset[str]) -> NamedView:
        """The resources of `names` that exist, with their SotW version and
        encoded body, memoized per snapshot: streams asking for the same
        names (every Envoy of a group, typically) share one view. Only a
        `SharedNames` set is memoized, weakly: the view lives as long as some
        stream holds exactly that set."""
        views = self._named.get(type_url)
        view = views.get(names) if views is not None and isinstance(names, SharedNames) else None
        if view is None:
            resources = self.get(type_url)
            picked = {n: resources[n] for n in sorted(names) if n in resources}
            view = NamedView(
                resources=MappingProxyType(picked),
                versions=MappingProxyType({n: r.version for n, r in picked.items()}),
                version=view_version(picked.values()),
                body=b"".join(r.sotw_field for r in picked.values()),
            )
            if isinstance(names, SharedNames):
                self._named.setdefault(type_url, weakref.WeakKeyDictionary())[names] = view
        return view

    def wildcard_body(self, type_url: str) -> bytes:
        """The concatenated `resources` fields of a full-state SotW response,
        encoded once per snapshot and shared by every wildcard stream."""
        body = self._wildcard_bodies.get(type_url)
        if body is None:
            body = b"".join(r.sotw_field for r in self.wildcard(type_url).values())
            self._wildcard_bodies[type_url] = body
        return body

    def changes_since(self, serial: int) -> ChangeSet | None:
        """Names changed per type since the snapshot with `serial`, or None
        when that snapshot is not a recent ancestor (caller does a full diff)."""
        if serial == self.serial:
            return MappingProxyType({})
        return self._changes.get(serial)

    def link(self, previous: Snapshot) -> None:
        """Record what changed since `previous` (and its recent ancestors).
        The cache calls this once, before publishing the snapshot."""
        if previous.serial in self._linked:
            return  # the same snapshot published under several keys
        self._linked.add(previous.serial)
        step = self._changes.get(previous.serial)  # known when built from `previous`
        if step is None:
            step = diff_snapshots(previous, self)
        if len(self._changes) > _MAX_CHANGE_ENTRIES:
            self._changes.clear()  # bounded; streams fall back to a full diff
        self._changes[previous.serial] = step
        recent = sorted(previous._changes.items(), reverse=True)[: _CHANGE_HISTORY - 1]
        for serial, older in recent:
            merged = dict(older)
            for type_url, names in step.items():
                merged[type_url] = merged.get(type_url, frozenset()) | names
            self._changes[serial] = merged

    def consistency_issues(self) -> tuple[str, ...]:
        """Go-control-plane's Consistent(), as a report: every route
        configuration a listener names and every endpoint assignment an EDS
        cluster names must exist. Never raises; computed once."""
        if self._issues is None:
            self._issues = self._check_consistency()
        return self._issues

    def _check_consistency(self) -> tuple[str, ...]:
        # Reuse the previous snapshot's findings for a half whose inputs did
        # not change (a one-endpoint change keeps listeners, routes and
        # clusters, and the set of endpoint names).
        base, self._base = self._base, None
        listeners = clusters = None
        if base is not None:
            if base.listener_issues is not None and _same(
                (self._owned.get(LISTENER), self._owned.get(ROUTE)), (base.listeners, base.routes)
            ):
                listeners = base.listener_issues
            if base.cluster_issues is not None and _same(
                (self._owned.get(CLUSTER), self._owned.get(ENDPOINT)),
                (base.clusters, base.endpoints),
            ):
                clusters = base.cluster_issues
        if listeners is None:
            listeners = self._listener_issues()
        if clusters is None:
            clusters = self._cluster_issues()
        self._listener_findings, self._cluster_findings = listeners, clusters
        return listeners + clusters

    def _listener_issues(self) -> tuple[str, ...]:
        routes = self.get(ROUTE)
        return tuple(
            f"listener {name!r} names missing route config {rds_name!r}"
            for name, res in sorted(self.get(LISTENER).items())
            for rds_name in _references(res, _listener_rds_names)
            if rds_name not in routes
        )

    def _cluster_issues(self) -> tuple[str, ...]:
        endpoints = self.get(ENDPOINT)
        return tuple(
            f"cluster {name!r} names missing endpoints {eds_name!r}"
            for name, res in sorted(self.get(CLUSTER).items())
            for eds_name in _references(res, _cluster_eds_names)
            if eds_name not in endpoints
        )

    def __repr__(self) -> str:
        counts = ", ".join(f"{t.rsplit('.', 1)[-1]}={len(r)}" for t, r in self.resources.items())
        return f"Snapshot(label={self.label!r}, serial={self.serial}, {counts})"


_EMPTY: Mapping[str, EncodedResource] = MappingProxyType({})


def _encode_type(
    type_url: str,
    by_name: Mapping[str, Message],
    old: Mapping[str, EncodedResource],
    label: str,
) -> tuple[dict[str, EncodedResource], set[str]]:
    """Encode one type; returns the resources and the names not reused."""
    out: dict[str, EncodedResource] = {}
    changed: set[str] = set()
    old_get = old.get  # the loop below runs once per resource of the mesh
    for name, message in by_name.items():
        previous = old_get(name)
        # The hot path of a one-endpoint change: the very same message object.
        if previous is not None and previous.message is message:
            out[name] = previous
            continue
        fresh = out[name] = _encode(type_url, name, message, previous, label)
        if fresh is not previous:
            changed.add(name)
    return out, changed


def _encode(
    type_url: str, name: str, message: Message, old: EncodedResource | None, label: str
) -> EncodedResource:
    if not isinstance(message, Message):
        raise SnapshotError(
            f"snapshot {label!r}: resource {name!r} of {type_url} is not a protobuf message"
        )
    if old is not None and old.message is message:
        return old
    try:
        fresh = EncodedResource(type_url, name, message)
    except Exception as exc:
        raise SnapshotError(
            f"snapshot {label!r}: resource {name!r} of {type_url} cannot be encoded: {exc}"
        ) from exc
    if old is not None and old.version == fresh.version:
        return old  # keep the shared object so identity checks stay cheap
    return fresh


def diff_snapshots(old: Snapshot, new: Snapshot) -> dict[str, frozenset[str]]:
    """Names added, changed, removed or served differently (by name only, or
    to wildcards too) per type between two snapshots."""
    changes: dict[str, frozenset[str]] = {}
    for type_url in set(old.resources) | set(new.resources):
        before, after = old.get(type_url), new.get(type_url)
        changed = {n for n, r in after.items() if before.get(n) is not r}
        changed.update(n for n in before if n not in after)
        if changed:
            changes[type_url] = frozenset(changed)
    _add_visibility_changes(changes, old, new)
    return changes


def _add_visibility_changes(
    changes: dict[str, frozenset[str]], old: Snapshot, new: Snapshot
) -> None:
    """A name that moved in or out of the wildcard view changed for wildcard
    subscribers even when its content did not."""
    for type_url in old.named_only.keys() | new.named_only.keys():
        moved = old.named_only.get(type_url, frozenset()) ^ new.named_only.get(
            type_url, frozenset()
        )
        if moved:
            changes[type_url] = changes.get(type_url, frozenset()) | moved


def _listener_rds_names(message: Message) -> list[str]:
    if not isinstance(message, listener_pb2.Listener):
        return []
    names: list[str] = []
    chains = list(message.filter_chains)
    if message.HasField("default_filter_chain"):
        chains.append(message.default_filter_chain)
    for chain in chains:
        for net_filter in chain.filters:
            if net_filter.typed_config.type_url != _HCM_TYPE:
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            try:
                net_filter.typed_config.Unpack(hcm)
            except DecodeError:
                continue
            if hcm.HasField("rds"):
                names.append(hcm.rds.route_config_name)
    return names


def _cluster_eds_names(message: Message) -> list[str]:
    if not isinstance(message, cluster_pb2.Cluster):
        return []
    if message.type != cluster_pb2.Cluster.EDS:
        return []
    return [str(message.eds_cluster_config.service_name or message.name)]


def _references(res: EncodedResource, extract: Callable[[Message], list[str]]) -> tuple[str, ...]:
    """Names `res` refers to, parsed once per encoded resource (unchanged
    resources are shared between snapshots, so a new snapshot re-parses only
    what changed)."""
    if res.references is None:
        res.references = tuple(extract(res.message))
    return res.references
