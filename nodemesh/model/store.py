"""MeshStore: where sources put raw objects and the mesh model comes out.

Sources (the file source, the Kubernetes watcher) `apply`, `delete` and
`replace_all` raw Kubernetes-shaped dicts under their own source name. `build`
turns what they hold into an immutable `MeshModel`, parsing only what changed.

Keep-last-good: an object that fails to parse, or a CiliumEnvoyConfig that is
not admitted (see `admission`), is reported as an `ObjectError`; if an
earlier version of it was accepted, that version stays in effect.

When two sources hold the same object, the source whose name sorts first
wins. The model's `version` hashes the accepted objects only, so it does not
depend on source names, apply order, restarts or which replica built it.

Call every method from the thread running the event loop. `updates()`
builds in a worker thread (`build_async`), so a large input never stalls the
loop that serves xDS streams and health checks: sources keep writing while a
build runs, and the build reads a copy of what they held when it started.
"""

from __future__ import annotations

import asyncio
import gc
import math
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol

import structlog

from nodemesh.model import metrics
from nodemesh.model.admission import Contender, admit
from nodemesh.model.assemble import Assembly
from nodemesh.model.errors import ParseError, UnknownKindError
from nodemesh.model.objects import EnvoyConfig, Kind, ObjectError, ObjectRef
from nodemesh.model.parse import ParseResult, object_ref, parse_object
from nodemesh.model.snapshot import MeshModel

log = structlog.get_logger("nodemesh.model")


class EnvoyConfigValidator(Protocol):
    """Checks a CEC's Envoy resources (the xDS side parses them with protobuf)."""

    def __call__(self, config: EnvoyConfig) -> Sequence[ObjectError]: ...


class MeshStore:
    def __init__(
        self,
        validators: Sequence[EnvoyConfigValidator] = (),
        reserved_ports: Collection[int] = (),
    ) -> None:
        """`reserved_ports` are never handed out as proxy ports (e.g. Envoy's admin)."""
        self._validators = tuple(validators)
        self._sources: dict[str, dict[ObjectRef, Mapping[str, Any]]] = {}
        self._dirty: set[ObjectRef] = set()
        self._parse_errors: dict[ObjectRef, ParseError] = {}
        # Latest successfully parsed CEC per ref (admission decides on it).
        self._candidates: dict[ObjectRef, ParseResult] = {}
        self._validated: dict[ObjectRef, tuple[EnvoyConfig, Sequence[ObjectError]]] = {}
        self._assembly = Assembly(reserved_ports)
        self._current = self._assembly.snapshot(0, ())
        self._admission_errors: tuple[ObjectError, ...] = ()
        self._waiters: set[asyncio.Event] = set()
        # What `_effective` reads: the sources themselves, or a copy of them
        # while a build runs in a worker thread.
        self._view = self._sources
        self._building = threading.Lock()
        self._async_building: asyncio.Lock | None = None

    @property
    def current(self) -> MeshModel:
        """The last model built (not including changes since)."""
        return self._current

    def apply(self, source: str, raw: Mapping[str, Any]) -> None:
        """Upsert one object. Raises ParseError when it cannot even be identified
        (UnknownKindError for kinds the mesh does not model).

        The store keeps `raw` itself, not a copy: do not mutate it afterwards
        (a change would go unnoticed); apply a new dict instead."""
        ref = object_ref(raw)
        held = self._sources.setdefault(source, {})
        if held.get(ref) != raw:
            held[ref] = raw
            self._touch(ref)

    def delete(self, source: str, kind: str, namespace: str, name: str) -> None:
        """Remove one object the source held (no-op if it held none). Raises
        UnknownKindError for a kind the mesh does not model."""
        try:
            kind_ = Kind(kind)
        except ValueError:
            raise UnknownKindError("", kind, namespace, name) from None
        ref = ObjectRef(kind_, "" if kind_.cluster_scoped else namespace or "default", name)
        if self._sources.get(source, {}).pop(ref, None) is not None:
            self._touch(ref)

    def replace_all(self, source: str, raws: Iterable[Mapping[str, Any]]) -> tuple[ParseError, ...]:
        """Make `raws` the source's complete set: missing objects are deleted, the
        rest upserted, all in one step (no build sees a partial set). Objects
        that cannot be identified are skipped and returned."""
        fresh: dict[ObjectRef, Mapping[str, Any]] = {}
        skipped: list[ParseError] = []
        for raw in raws:
            try:
                fresh[object_ref(raw)] = raw
            except ParseError as exc:
                skipped.append(exc)
        old = self._sources.get(source, {})
        changed = [r for r in old.keys() - fresh.keys()]
        changed += [r for r, raw in fresh.items() if old.get(r) != raw]
        self._sources[source] = fresh
        for ref in changed:
            self._touch(ref)
        return tuple(skipped)

    def sources(self) -> dict[str, int]:
        """Objects held per source name."""
        return {name: len(held) for name, held in sorted(self._sources.items())}

    def _touch(self, ref: ObjectRef) -> None:
        self._dirty.add(ref)
        for waiter in self._waiters:
            waiter.set()

    def _effective(self, ref: ObjectRef) -> Mapping[str, Any] | None:
        view = self._view
        if len(view) == 1:
            for held in view.values():
                return held.get(ref)
        for name in sorted(view):
            raw = view[name].get(ref)
            if raw is not None:
                return raw
        return None

    def build(self) -> MeshModel:
        """A new snapshot if anything changed since the last build, else `current`."""
        if not self._dirty:
            return self._current
        with self._building:
            dirty, self._dirty = self._dirty, set()
            return self._build_paused(dirty)

    async def build_async(self) -> MeshModel:
        """`build`, with the parsing, admission and assembly in a worker thread.
        Builds are serialized; sources may apply changes meanwhile (they go
        into the next build)."""
        if self._async_building is None:
            self._async_building = asyncio.Lock()
        async with self._async_building:
            if not self._dirty:
                return self._current
            dirty, self._dirty = self._dirty, set()
            # A shallow copy per source: sources replace or update their own
            # dicts on the loop while the worker reads this one.
            view = {name: dict(held) for name, held in self._sources.items()}
            return await asyncio.to_thread(self._build_in_thread, dirty, view)

    def _build_in_thread(
        self, dirty: set[ObjectRef], view: dict[str, dict[ObjectRef, Mapping[str, Any]]]
    ) -> MeshModel:
        with self._building:
            self._view = view
            try:
                return self._build_paused(dirty)
            finally:
                self._view = self._sources

    def _build_paused(self, dirty: set[ObjectRef]) -> MeshModel:
        # A full build allocates a few hundred thousand acyclic objects; the
        # cyclic GC would rescan them over and over for nothing (measured: 2-4x
        # slower). Nothing built here forms cycles, so pausing it is safe.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._build(dirty)
        finally:
            if paused:
                gc.enable()

    def _build(self, dirty: set[ObjectRef]) -> MeshModel:
        started = time.perf_counter()
        for ref in dirty:
            self._reparse(ref)
        if any(
            r.kind in (Kind.ENVOY_CONFIG, Kind.CLUSTERWIDE_ENVOY_CONFIG, Kind.SERVICE)
            for r in dirty
        ):
            self._readmit()
        self._assembly.refresh()
        errors = self._errors()
        if self._assembly.unchanged_since(self._current, errors):
            return self._current
        model = self._assembly.snapshot(self._current.generation + 1, errors)
        self._report(model, time.perf_counter() - started)
        self._current = model
        return model

    def _reparse(self, ref: ObjectRef) -> None:
        raw = self._effective(ref)
        if self._parse_errors:
            self._parse_errors.pop(ref, None)
        is_config = ref.kind in (Kind.ENVOY_CONFIG, Kind.CLUSTERWIDE_ENVOY_CONFIG)
        if raw is None:
            self._candidates.pop(ref, None)
            self._validated.pop(ref, None)
            self._assembly.put(ref, None, ())
            return
        try:
            result = parse_object(raw, ref)
        except ParseError as exc:
            if exc.ref is None:
                exc = ParseError(ref, exc.field, exc.reason)
            self._parse_errors[ref] = exc
            if is_config:
                self._candidates.pop(ref, None)
            return
        if is_config:
            self._candidates[ref] = result
        else:
            self._assembly.put(ref, result.obj, result.warnings)

    def _readmit(self) -> None:
        configs = self._assembly.configs
        refs = (self._candidates.keys() | configs.keys()) - {
            r for r in configs if self._effective(r) is None
        }
        contenders = {ref: Contender(self._candidate(ref), configs.get(ref)) for ref in refs}
        admission = admit(contenders, self._assembly.services, self._validate)
        admitted = {c.ref: c for c in admission.configs}
        for ref in refs | configs.keys():
            config = admitted.get(ref)
            candidate = self._candidates.get(ref)
            notes = candidate.warnings if candidate and candidate.obj == config else None
            self._assembly.put(ref, config, notes)
        self._admission_errors = admission.errors

    def _candidate(self, ref: ObjectRef) -> EnvoyConfig | None:
        result = self._candidates.get(ref)
        return result.obj if result and isinstance(result.obj, EnvoyConfig) else None

    def _validate(self, config: EnvoyConfig) -> Sequence[ObjectError]:
        cached = self._validated.get(config.ref)
        if cached is not None and cached[0] == config:
            return cached[1]
        found: list[ObjectError] = []
        for validator in self._validators:
            try:
                found.extend(validator(config))
            except Exception as exc:
                # A validator bug must not take the whole model down: this one
                # CEC is refused (its previous version kept) and the bug logged.
                log.exception("validator_failed", object=str(config.ref))
                found.append(ObjectError(config.ref, "spec", f"validator failed: {exc!r}"))
        self._validated[config.ref] = (config, tuple(found))
        return found

    def _errors(self) -> tuple[ObjectError, ...]:
        found = [
            exc.to_object_error(kept_previous=self._assembly.has(ref))
            for ref, exc in self._parse_errors.items()
        ]
        found.extend(self._admission_errors)
        found.extend(self._assembly.redirect_errors)
        return tuple(sorted(set(found), key=lambda e: (str(e.ref), e.field, e.reason)))

    def _report(self, model: MeshModel, seconds: float) -> None:
        metrics.BUILDS.inc()
        metrics.BUILD_SECONDS.observe(seconds)
        metrics.REDIRECTS.set(len(model.redirects))
        for kind, count in self._assembly.counts().items():
            metrics.OBJECTS.labels(kind=kind.value).set(count)
        per_kind = {k: 0 for k in Kind}
        for error in model.errors:
            per_kind[error.ref.kind] += 1
        for kind, count in per_kind.items():
            metrics.OBJECT_ERRORS.labels(kind=kind.value).set(count)
        before = set(self._current.errors)
        for error in model.errors:
            if error not in before:
                log.warning(
                    "object_rejected",
                    object=str(error.ref),
                    field=error.field,
                    reason=error.reason,
                    kept_previous=error.kept_previous,
                )
        cleared = {e.ref for e in before} - {e.ref for e in model.errors}
        for ref in sorted(cleared):
            log.info("object_errors_cleared", object=str(ref))
        log.info(
            "model_built",
            version=model.version,
            generation=model.generation,
            errors=len(model.errors),
            redirects=len(model.redirects),
            seconds=round(seconds, 6),
        )

    async def updates(self, debounce: float = 0.05) -> AsyncIterator[MeshModel]:
        """The current model, then the latest model after each burst of changes.

        Leading edge: a change that reaches an idle consumer (waiting for the
        next model) at least `debounce` seconds after the last build started
        is built at once, so an isolated change pays no fixed delay. Any
        other change belongs to a burst and is debounced: built when
        `debounce` seconds pass without a change, or at the latest after 20
        debounce periods, so constant churn still gets published. A burst
        costs at most two builds, one more than a plain debounce, and churn
        no more than before. Slow consumers see only the newest model (no
        queue builds up).
        """
        event = asyncio.Event()
        self._waiters.add(event)
        loop = asyncio.get_running_loop()
        try:
            # The first model answers no change: it opens no window.
            built_at = -math.inf
            model = await self.build_async()
            yield model
            last = model.generation
            while True:
                # Changes made while the consumer was busy with the last model
                # belong to its burst; a change after a quiet spell does not.
                busy = event.is_set()
                await event.wait()
                if busy or loop.time() - built_at < debounce:
                    await _settle(event, debounce)
                event.clear()
                built_at = loop.time()
                model = await self.build_async()
                if model.generation != last:
                    last = model.generation
                    yield model
        finally:
            self._waiters.discard(event)


async def _settle(event: asyncio.Event, debounce: float) -> None:
    """Return once `event` stays unset for `debounce` seconds, or after 20
    debounce periods at the latest."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20 * debounce
    while True:
        event.clear()
        await asyncio.sleep(debounce)
        if not event.is_set() or loop.time() >= deadline:
            return
