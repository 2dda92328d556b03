"""One informer: turns a resource's list/watch stream into ObjectSink calls.

It remembers each object's content (see `content`), so that
- a change to only the status of a kind whose status nodemesh writes (the
  cilium.io kinds) never reaches the model: our own status writes cannot
  retrigger translation;
- a replayed event (the same object version seen twice across a reconnect)
  is not applied twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from nodemesh.k8s_watch.compact import CompactObject
from nodemesh.k8s_watch.health import WatchHealth
from nodemesh.k8s_watch.resources import ResourceSpec
from nodemesh.k8s_watch.settings import WatchSettings
from nodemesh.k8s_watch.sink import ObjectSink
from nodemesh.k8s_watch.watching import SKIPPED, Changed, Listed, WatchApi, informer_stream
from nodemesh.model.errors import ParseError

log = structlog.get_logger("nodemesh.k8s_watch")

Raw = dict[str, Any]
Key = tuple[str, str]

# Metadata the API server changes on every write; never content.
_VOLATILE_META = ("resourceVersion", "managedFields", "generation")
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class MalformedObject(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the status reporter needs of a watched object: its uid (Events
    link to it), its generation (observedGeneration), and the conditions its
    status holds now (so nothing is rewritten that is already there)."""

    uid: str
    generation: int
    conditions: tuple[Mapping[str, Any], ...]
    # Gateway API routes: status.parents[] (every controller's entries).
    parents: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Prepared:
    """One listed object, ready for the sink."""

    key: Key
    content: CompactObject
    meta: ObjectMeta | None  # only where the status is ours (see Informer.meta)


def object_meta(raw: Raw) -> ObjectMeta:
    meta = raw.get("metadata") or {}
    status = raw.get("status")
    conds = status.get("conditions") if isinstance(status, dict) else None
    generation = meta.get("generation")
    parents = status.get("parents") if isinstance(status, dict) else None
    return ObjectMeta(
        str(meta.get("uid", "")),
        generation if isinstance(generation, int) else 0,
        tuple(c for c in conds if isinstance(c, dict)) if isinstance(conds, list) else (),
        tuple(p for p in parents if isinstance(p, dict)) if isinstance(parents, list) else (),
    )


def content(spec: ResourceSpec, obj: Raw) -> CompactObject:
    """What the model may depend on: the object without what the API server
    changes on every write, and without status where the status is ours. Two
    versions with equal content compare equal (canonical JSON bytes)."""
    body = {k: v for k, v in obj.items() if k != "metadata"}
    if spec.status_is_ours:
        body.pop("status", None)
    meta = obj.get("metadata") or {}
    body["metadata"] = kept = {k: v for k, v in meta.items() if k not in _VOLATILE_META}
    notes = kept.get("annotations")
    if isinstance(notes, dict) and _LAST_APPLIED in notes:
        # kubectl's copy of the whole object: never meaningful, often large.
        kept["annotations"] = {k: v for k, v in notes.items() if k != _LAST_APPLIED}
    return CompactObject(body)


def normalize(spec: ResourceSpec, obj: Raw) -> tuple[Key, Raw]:
    """Check the identity fields and fill in apiVersion/kind (list items lack them)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise MalformedObject("metadata.name is missing or not a string")
    ns = meta.get("namespace", "")
    if spec.namespaced and (not isinstance(ns, str) or not ns):
        raise MalformedObject("metadata.namespace is missing for a namespaced kind")
    if obj.get("kind") != spec.kind.value or obj.get("apiVersion") != spec.api_version:
        obj = {**obj, "apiVersion": spec.api_version, "kind": spec.kind.value}
    return (ns if spec.namespaced else "", meta["name"]), obj


class Informer:
    def __init__(
        self,
        spec: ResourceSpec,
        api: WatchApi,
        sink: ObjectSink,
        settings: WatchSettings,
        health: WatchHealth,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self._api, self._sink, self._settings, self._health = api, sink, settings, health
        self._on_change = on_change
        # The same CompactObject the sink holds: remembering costs no memory.
        self._seen: dict[Key, CompactObject] = {}
        self._meta: dict[Key, ObjectMeta] = {}
        health.register(str(spec))

    @property
    def known(self) -> int:
        return len(self._seen)

    def meta(self, namespace: str, name: str) -> ObjectMeta | None:
        key = (namespace if self.spec.namespaced else "", name)
        if self.spec.status_is_ours:
            return self._meta.get(key)
        # Kept as content only (uid included): one Event in a while does not
        # justify holding a second copy of every Service's metadata.
        held = self._seen.get(key)
        return object_meta(dict(held)) if held is not None else None

    async def run(self) -> None:
        stream = informer_stream(
            self._api, self.spec, self._settings, self._health, prepare=self._prepare
        )
        async for item in stream:
            changed = self._relist(item) if isinstance(item, Listed) else self._event(item)
            if changed and self._on_change is not None:
                self._on_change()

    def _skip(self, obj: Any, exc: Exception) -> None:
        SKIPPED.labels(str(self.spec)).inc()
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        log.warning(
            "object_skipped",
            resource=str(self.spec),
            error=str(exc),
            name=meta.get("name") if isinstance(meta, dict) else None,
        )

    def _prepare(self, item: Raw) -> Prepared | None:
        try:
            key, raw = normalize(self.spec, item)
        except MalformedObject as exc:
            self._skip(item, exc)
            return None
        meta = object_meta(raw) if self.spec.status_is_ours else None
        return Prepared(key, content(self.spec, raw), meta)

    def _relist(self, listed: Listed) -> bool:
        prepared: list[Prepared] = listed.items
        seen = {p.key: p.content for p in prepared}
        self._meta = {p.key: p.meta for p in prepared if p.meta is not None}
        if seen == self._seen and self._seen:
            return False  # a relist that found nothing new (e.g. after a 410)
        # One call for the whole set: objects missing from it are deleted in the
        # same step, so the model never has a window without them or with stale ones.
        skipped = self._sink.replace_all(self.spec.source, [p.content for p in prepared])
        for error in skipped if isinstance(skipped, tuple) else ():
            self._skip({}, error)
        self._seen = seen
        return True

    def _event(self, change: Changed) -> bool:
        try:
            key, raw = normalize(self.spec, change.obj)
        except MalformedObject as exc:
            self._skip(change.obj, exc)
            return False
        if change.type == "DELETED":
            self._meta.pop(key, None)
            if self._seen.pop(key, None) is None:
                return False
            try:
                self._sink.delete(self.spec.source, self.spec.kind.value, *key)
            except ParseError as exc:
                self._skip(change.obj, exc)
                return False
            return True
        compact = content(self.spec, raw)
        if self.spec.status_is_ours:
            self._meta[key] = object_meta(raw)
        if self._seen.get(key) == compact:
            return False  # status-only change, or a replay of what we have
        try:
            self._sink.apply(self.spec.source, compact)
        except ParseError as exc:
            self._skip(raw, exc)  # not even identifiable: nothing to report it on
            return False
        self._seen[key] = compact
        return True
