"""Writes Accepted/Programmed conditions and Events back to the API server.

Nothing loops:
- the informers ignore status-only changes of the cilium.io kinds, so these
  writes never reach the model or retrigger translation;
- a condition is written only when it differs from what the object's status
  already holds (as last watched) and from what this reporter last wrote;
- writes per object pass a token bucket (`status_burst`, `status_qps`); an
  object over its budget is retried on a later reconcile.

Several agents (one per node) may report on the same object. They agree on
Accepted (same model). Programmed's EnvoyNACK message has one line per node;
an agent rewrites only its own node's lines and keeps the others', so agents
converge instead of overwriting each other, and each node clears its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from prometheus_client import Counter

from nodemesh.k8s_watch.conditions import Condition, NackReport, NackSource, conditions_for
from nodemesh.k8s_watch.errors import ApiRejected, ApiUnavailable
from nodemesh.k8s_watch.informer import ObjectMeta
from nodemesh.k8s_watch.resources import ResourceSpec, spec_for_kind
from nodemesh.k8s_watch.route_status import parents_body, route_nacks
from nodemesh.k8s_watch.settings import WatchSettings
from nodemesh.model.objects import ObjectError, ObjectRef
from nodemesh.model.snapshot import MeshModel

log = structlog.get_logger("nodemesh.k8s_watch.status")

# events.k8s.io/v1 Event fields: the controller (a qualified name) and the
# note's limit in bytes, as the API server validates them.
REPORTING_CONTROLLER = "nodemesh"
NOTE_LIMIT = 1024

WRITES = Counter(
    "nodemesh_k8s_status_writes_total", "Status patches and Events written", ["what", "result"]
)


class StatusApi(Protocol):
    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None: ...

    async def patch_status(
        self, spec: ResourceSpec, namespace: str, name: str, body: Mapping[str, Any]
    ) -> None: ...


class ObjectLookup(Protocol):
    def lookup(self, kind: str, namespace: str, name: str) -> ObjectMeta | None: ...


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: int
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.stamp = float(self.burst), now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class ReconcileResult:
    status_writes: int = 0
    events: int = 0
    deferred: int = 0  # over the rate limit or the API was down: retried later
    refs: list[ObjectRef] = field(default_factory=list)


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusReporter:
    def __init__(
        self,
        api: StatusApi,
        lookup: ObjectLookup,
        *,
        node: str,
        settings: WatchSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api, self._lookup, self.node = api, lookup, node
        self._settings = settings or WatchSettings()
        self._clock = clock
        # What we last wrote per object: (uid, generation, conditions). The uid
        # tells a deleted and recreated object (same name) from the old one.
        self._written: dict[ObjectRef, tuple[str, int, tuple[Condition, ...]]] = {}
        self._buckets: dict[ObjectRef, TokenBucket] = {}
        # Errors already told as an Event: (object, field, reason) -> uid told.
        self._error_events: dict[tuple[ObjectRef, str, str], str] = {}

    async def reconcile(
        self,
        model: MeshModel,
        nacks: Iterable[NackReport] = (),
        translation_errors: Iterable[ObjectError] = (),
    ) -> ReconcileResult:
        result = ReconcileResult()
        mine = [n for n in nacks if n.node == self.node]
        desired = conditions_for(model, mine, translation_errors)
        for ref, conds in sorted(desired.items()):
            meta = self._lookup.lookup(ref.kind.value, ref.namespace, ref.name)
            if meta is None:
                continue  # not (yet) seen in the API server: from another source
            await self._report(ref, meta, self._keep_foreign_nack(meta, conds), result)
        await self._other_errors(model, result)
        routes = await self._routes(model, mine, result)
        for gone in set(self._written) - set(desired) - routes:
            self._written.pop(gone, None)
            self._buckets.pop(gone, None)
        return result

    def _keep_foreign_nack(
        self, meta: ObjectMeta, conds: tuple[Condition, Condition]
    ) -> tuple[Condition, Condition]:
        """Merge other nodes' NACK lines, as the object holds them now, with
        ours: each agent owns only its own node's lines, so agents never undo
        each other's writes (which would loop between them)."""
        accepted, programmed = conds
        current = next((c for c in meta.conditions if c.get("type") == "Programmed"), None)
        if accepted.status != "True" or current is None or current.get("reason") != "EnvoyNACK":
            return conds
        ours = f"node {self.node} "
        lines = str(current.get("message", "")).split("\n")
        foreign = [line for line in lines if line and not line.startswith(ours)]
        if not foreign:
            return conds
        mine = programmed.message.split("\n") if programmed.reason == "EnvoyNACK" else []
        merged = "\n".join(sorted(set(foreign + mine)))
        return accepted, Condition("Programmed", "False", "EnvoyNACK", merged)

    async def _report(
        self, ref: ObjectRef, meta: ObjectMeta, conds: tuple[Condition, ...], out: ReconcileResult
    ) -> None:
        current = {str(c.get("type")): c for c in meta.conditions}
        changed = [c for c in conds if not (c.type in current and c.same_as(current[c.type]))]
        stale = any(
            current[c.type].get("observedGeneration") != meta.generation
            for c in conds
            if c.type in current
        )
        wanted = (meta.uid, meta.generation, conds)
        if (not changed and not stale) or self._written.get(ref) == wanted:
            # Already there, or written by us and not yet seen back on the watch.
            self._written[ref] = wanted
            return
        bucket = self._buckets.setdefault(
            ref, TokenBucket(self._settings.status_qps, self._settings.status_burst)
        )
        if not bucket.take(self._clock()):
            out.deferred += 1
            return
        try:
            try:
                await self._patch(ref, meta, conds, current)
                out.status_writes += 1
            except ApiRejected as exc:
                # Not retried: e.g. a Cilium-installed CRD without a status
                # subresource (404). The Events below still tell every reason.
                log.warning("status_write_refused", object=str(ref), error=str(exc))
                WRITES.labels("status", "refused").inc()
            for cond in changed:
                await self._event(
                    ref,
                    meta,
                    cond.reason,
                    f"{cond.type}: {cond.message}",
                    cond.status == "True",
                    action=cond.type,
                )
                out.events += 1
        except ApiUnavailable as exc:
            out.deferred += 1
            log.warning("status_write_deferred", object=str(ref), error=str(exc))
            return
        except ApiRejected as exc:
            log.warning("event_refused", object=str(ref), error=str(exc))
            WRITES.labels("event", "refused").inc()
        self._written[ref] = wanted
        out.refs.append(ref)

    async def _patch(
        self,
        ref: ObjectRef,
        meta: ObjectMeta,
        conds: tuple[Condition, ...],
        current: Mapping[str, Mapping[str, Any]],
    ) -> None:
        spec = spec_for_kind(ref.kind)
        assert spec is not None
        now = _timestamp()
        merged = dict(current)
        for cond in conds:
            old = current.get(cond.type)
            moved = old is None or old.get("status") != cond.status
            merged[cond.type] = {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "observedGeneration": meta.generation,
                "lastTransitionTime": now if moved else (old or {}).get("lastTransitionTime", now),
            }
        body = {"status": {"conditions": [merged[k] for k in sorted(merged)]}}
        await self._api.patch_status(spec, ref.namespace, ref.name, body)
        WRITES.labels("status", "ok").inc()

    async def _event(
        self,
        ref: ObjectRef,
        meta: ObjectMeta,
        reason: str,
        message: str,
        normal: bool,
        action: str = "Validate",
    ) -> None:
        """An `events.k8s.io/v1` Event: what `kubectl events` and `kubectl
        describe` show. The API server validates this version strictly
        (eventTime with microseconds, reportingController, reportingInstance,
        action; no legacy count or source), so the body carries exactly those."""
        spec = spec_for_kind(ref.kind)
        assert spec is not None
        # Events about cluster-scoped objects live in "default", as kubectl expects.
        namespace = ref.namespace or "default"
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            # Named as client-go's recorder names them: the server validates a
            # generateName as a whole DNS subdomain, so "name." would be refused.
            "metadata": {"name": f"{ref.name[:230]}.{time.time_ns():x}", "namespace": namespace},
            "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "regarding": {
                "apiVersion": spec.api_version,
                "kind": ref.kind.value,
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": meta.uid,
            },
            "reason": reason,
            "action": action,
            # The server caps the note at 1 KiB, counted in bytes.
            "note": message.encode()[:NOTE_LIMIT].decode(errors="ignore"),
            "type": "Normal" if normal else "Warning",
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.node[:128],
        }
        await self._api.create_event(namespace, body)
        WRITES.labels("event", "ok").inc()

    async def _routes(
        self, model: MeshModel, nacks: list[NackReport], out: ReconcileResult
    ) -> set[ObjectRef]:
        """status.parents of every route attached to a Service (route_status.py)."""
        seen = set()
        for status in model.gamma.statuses:
            ref = status.ref
            seen.add(ref)
            meta = self._lookup.lookup(ref.kind.value, ref.namespace, ref.name)
            if meta is None:
                continue
            lines = route_nacks(model, ref, nacks)
            body = parents_body(
                status, meta.parents, meta.generation, lines, _timestamp(), self.node
            )
            wanted = (meta.uid, meta.generation, (Condition("parents", "", "", repr(body)),))
            if body is None or self._written.get(ref) == wanted:
                continue
            bucket = self._buckets.setdefault(
                ref, TokenBucket(self._settings.status_qps, self._settings.status_burst)
            )
            if not bucket.take(self._clock()):
                out.deferred += 1
                continue
            spec = spec_for_kind(ref.kind)
            assert spec is not None
            try:
                await self._api.patch_status(
                    spec, ref.namespace, ref.name, {"status": {"parents": body}}
                )
                WRITES.labels("status", "ok").inc()
            except ApiUnavailable as exc:
                out.deferred += 1
                log.warning("status_write_deferred", object=str(ref), error=str(exc))
                continue
            except ApiRejected as exc:
                log.warning("status_write_refused", object=str(ref), error=str(exc))
                WRITES.labels("status", "refused").inc()
            self._written[ref] = wanted
            out.status_writes += 1
            out.refs.append(ref)
        return seen

    async def _other_errors(self, model: MeshModel, out: ReconcileResult) -> None:
        """A Warning Event, once, for every other object the model rejected
        (a malformed Service, EndpointSlice or Pod): it was skipped, the rest flows.
        An error that goes away and comes back is reported again."""
        current = {(e.ref, e.field, e.reason) for e in model.errors}
        self._error_events = {k: v for k, v in self._error_events.items() if k in current}
        for error in model.errors:
            key = (error.ref, error.field, error.reason)
            if spec_for_kind(error.ref.kind) is None or error.ref.kind.value.startswith("Cilium"):
                continue  # unknown here, or reported through conditions above
            meta = self._lookup.lookup(error.ref.kind.value, error.ref.namespace, error.ref.name)
            if meta is None or self._error_events.get(key) == meta.uid:
                continue
            try:
                await self._event(
                    error.ref, meta, "InvalidObject", f"{error.field}: {error.reason}", False
                )
            except ApiUnavailable as exc:
                log.warning("event_deferred", object=str(error.ref), error=str(exc))
                out.deferred += 1
                continue
            except ApiRejected as exc:
                log.warning("event_refused", object=str(error.ref), error=str(exc))
                WRITES.labels("event", "refused").inc()
            self._error_events[key] = meta.uid
            out.events += 1

    async def run(
        self,
        current_model: Callable[[], MeshModel | None],
        wake: asyncio.Event,
        nacks: NackSource | None = None,
        interval: float = 5.0,
        translation_errors: Callable[[], Iterable[ObjectError]] | None = None,
    ) -> None:
        """Reconcile whenever `wake` is set, and every `interval` seconds so
        deferred writes (rate limit, API down) go out eventually."""
        while True:
            try:
                async with asyncio.timeout(interval):
                    await wake.wait()
            except TimeoutError:
                pass
            wake.clear()
            model = current_model()
            if model is not None:
                await self.reconcile(
                    model,
                    nacks.nacks() if nacks is not None else (),
                    translation_errors() if translation_errors is not None else (),
                )
