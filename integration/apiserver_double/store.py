"""The double's object store: resourceVersions, history, watchers, compaction.

Like etcd behind a real API server, every write bumps one global
resourceVersion and is appended to a history that watchers replay from.
`compact()` drops that history, so a watch or list continuation from an older
resourceVersion gets 410 Gone, exactly what a long-disconnected client sees.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "services", "Service"),
    ResourceType("", "v1", "pods", "Pod"),
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False),
    ResourceType("", "v1", "events", "Event"),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    ResourceType("events.k8s.io", "v1", "events", "Event"),
    ResourceType("apps", "v1", "deployments", "Deployment"),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ResourceType("cilium.io", "v2", "ciliumenvoyconfigs", "CiliumEnvoyConfig", True, True),
    ResourceType(
        "cilium.io",
        "v2",
        "ciliumclusterwideenvoyconfigs",
        "CiliumClusterwideEnvoyConfig",
        False,
        True,
    ),
    ResourceType("cilium.io", "v2", "ciliumnetworkpolicies", "CiliumNetworkPolicy", True, True),
    ResourceType(
        "cilium.io",
        "v2",
        "ciliumclusterwidenetworkpolicies",
        "CiliumClusterwideNetworkPolicy",
        False,
        True,
    ),
    ResourceType("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", True, True),
    ResourceType("gateway.networking.k8s.io", "v1", "grpcroutes", "GRPCRoute", True, True),
    ResourceType("gateway.networking.k8s.io", "v1beta1", "referencegrants", "ReferenceGrant"),
)


def find_type(group: str, version: str, plural: str) -> ResourceType:
    """The served type at group/version/plural; KeyError if the double has none
    (tests name types they know, so a typo fails loudly)."""
    for rtype in RESOURCE_TYPES:
        if (rtype.group, rtype.version, rtype.plural) == (group, version, plural):
            return rtype
    raise KeyError(f"unknown resource {group or 'core'}/{version}/{plural}")


def type_of_kind(kind: str, api_version: str) -> ResourceType:
    for rtype in RESOURCE_TYPES:
        if rtype.kind == kind and rtype.api_version == api_version:
            return rtype
    raise KeyError(f"unknown kind {api_version}/{kind}")


class StoreError(Exception):
    """A request the store refuses; carries the HTTP code and Status reason."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


class Gone(StoreError):
    def __init__(self, message: str) -> None:
        super().__init__(410, "Expired", message)


@dataclass(slots=True)
class Change:
    """One history entry. `prev` is the object before the change (None on ADDED)."""

    rv: int
    rtype: ResourceType
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    prev: Obj | None


@dataclass(slots=True, eq=False)
class Subscriber:
    """One open watch. Queue items: a Change, raw bytes (injected garbage) or
    None (the server wants the connection dropped)."""

    rtype: ResourceType
    queue: asyncio.Queue[Change | bytes | None] = field(default_factory=asyncio.Queue)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class ObjectStore:
    """All objects by type and (namespace, name), with watchable history."""

    def __init__(self, history_limit: int = 200_000) -> None:
        self.rv = 1
        self.floor = 1  # history holds every change with rv > floor
        self.objects: dict[ResourceType, dict[tuple[str, str], Obj]] = {
            t: {} for t in RESOURCE_TYPES
        }
        self.history: deque[Change] = deque(maxlen=history_limit)
        self.subscribers: set[Subscriber] = set()
        self._names = itertools.count(1)

    # -- writes -------------------------------------------------------------

    def create(self, rtype: ResourceType, obj: Obj, namespace: str = "") -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{next(self._names):05x}"
        if rtype.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if not key[1]:
            raise StoreError(422, "Invalid", "metadata.name: Required value")
        if key in self.objects[rtype]:
            raise StoreError(409, "AlreadyExists", f'{rtype.plural} "{key[1]}" already exists')
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        return self._commit(rtype, "ADDED", key, obj, None)

    def update(self, rtype: ResourceType, obj: Obj, *, status_only: bool = False) -> Obj:
        """PUT semantics: replace the object (or only its status)."""
        meta = obj.get("metadata", {})
        key = (meta.get("namespace", "") if rtype.namespaced else "", meta.get("name", ""))
        old = self.get(rtype, *key)
        sent_rv = meta.get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise StoreError(409, "Conflict", "the object has been modified; please retry")
        new = copy.deepcopy(old)
        if status_only:
            new["status"] = copy.deepcopy(obj.get("status", {}))
        else:
            new = copy.deepcopy(obj)
            new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
            keep = {k: old["metadata"][k] for k in ("uid", "creationTimestamp", "generation")}
            new.setdefault("metadata", {}).update(keep)
            if rtype.namespaced:
                new["metadata"]["namespace"] = key[0]
            if rtype.status_subresource:
                # As with a real status subresource: the main endpoint ignores status.
                new["status"] = copy.deepcopy(old.get("status"))
                if new["status"] is None:
                    del new["status"]
            if _spec_part(new) != _spec_part(old):
                new["metadata"]["generation"] = old["metadata"]["generation"] + 1
        return self._commit(rtype, "MODIFIED", key, new, old)

    def patch_status(self, rtype: ResourceType, namespace: str, name: str, patch: Obj) -> Obj:
        """JSON merge patch (RFC 7386) applied to the status subresource only."""
        old = self.get(rtype, namespace, name)
        new = copy.deepcopy(old)
        status = _merge(new.get("status") or {}, patch.get("status") or {})
        new["status"] = status
        return self._commit(rtype, "MODIFIED", (namespace, name), new, old)

    def delete(self, rtype: ResourceType, namespace: str, name: str) -> Obj:
        old = self.get(rtype, namespace, name)
        gone = copy.deepcopy(old)
        return self._commit(rtype, "DELETED", (namespace, name), gone, old)

    def _commit(
        self, rtype: ResourceType, etype: str, key: tuple[str, str], obj: Obj, prev: Obj | None
    ) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        if etype == "DELETED":
            del self.objects[rtype][key]
        else:
            self.objects[rtype][key] = obj
        if len(self.history) == self.history.maxlen:
            self.floor = self.history[0].rv
        change = Change(self.rv, rtype, etype, obj, prev)
        self.history.append(change)
        for sub in self.subscribers:
            if sub.rtype == rtype:
                sub.queue.put_nowait(change)
        return copy.deepcopy(obj)

    # -- reads --------------------------------------------------------------

    def get(self, rtype: ResourceType, namespace: str, name: str) -> Obj:
        ns = namespace if rtype.namespaced else ""
        try:
            return self.objects[rtype][(ns, name)]
        except KeyError:
            raise StoreError(404, "NotFound", f'{rtype.plural} "{name}" not found') from None

    def items(self, rtype: ResourceType) -> list[Obj]:
        return [self.objects[rtype][k] for k in sorted(self.objects[rtype])]

    def changes_since(self, rtype: ResourceType, rv: int) -> list[Change]:
        if rv < self.floor:
            raise Gone(f"too old resource version: {rv} ({self.floor})")
        return [c for c in self.history if c.rv > rv and c.rtype == rtype]

    # -- faults -------------------------------------------------------------

    def compact(self) -> None:
        """Forget all history: any watch from an earlier resourceVersion gets 410."""
        self.history.clear()
        self.floor = self.rv

    def drop_watches(self) -> None:
        for sub in self.subscribers:
            sub.queue.put_nowait(None)

    def inject_raw(self, rtype: ResourceType, line: bytes) -> None:
        """Send `line` verbatim (e.g. broken JSON) to every watcher of `rtype`."""
        for sub in self.subscribers:
            if sub.rtype == rtype:
                sub.queue.put_nowait(line)

    def load(self, objs: Iterable[Obj]) -> None:
        for obj in objs:
            rtype = type_of_kind(obj["kind"], obj["apiVersion"])
            self.create(rtype, obj)


def _merge(target: Obj, patch: Obj) -> Obj:
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
