"""The file source: a directory of YAML manifests, hot-reloaded.

Every `*.yaml` / `*.yml` in the directory (not in subdirectories; names
starting with "." are editor droppings and skipped) is read as a stream of
YAML documents. Each poll (0.5 s by default) stats the files and re-reads
those whose mtime or size changed, or whose mtime is recent enough that a
same-size rewrite within one timestamp tick could hide; a content hash then
decides whether anything really changed. On Linux, inotify (`inotify.py`,
through ctypes) wakes `run()` at once on any change of the directory, so an
edit reaches the model in milliseconds; polling stays as the fallback.

Writes settle before they are read (`settle_seconds`, 1 s by default): a
changed file is read only once it has not been written for that long, or
(with inotify) once its writer closed it or it was renamed into place, and
it is not empty; a vanished file counts as deleted only once it has stayed
away that long.
Editors and `kubectl cp` truncate and rewrite in place, or delete and
recreate; without settling, a poll between the two steps saw an empty or
missing file and withdrew its objects. A file that vanishes and comes back
within the window causes no change. `load()` (startup, one-shot commands)
reads what is there without settling.

Failure handling (docs/semantics.md):
- YAML that fails to parse keeps that file's last good content in effect; the
  error (file and line) is logged and kept in `errors`.
- A document that cannot be turned into an object (a misspelled kind or
  apiVersion, a bad metadata.name, an oversized object) is an error with its
  file and line; the object that document held before stays in effect.
- A deleted file deletes its objects (after the settle window).
- An object defined in two files: the file last in sorted order wins, with a
  warning in `warnings`.
- A document of a kind the mesh does not model is skipped with a warning.
- An entry that cannot be read (a symlink loop, permissions) is reported and
  skipped; the rest of the directory is read as usual.
- A missing directory is an error, and the last loaded content stays: a
  briefly unmounted volume must not tear the mesh down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog

from nodemesh.model.store import MeshStore
from nodemesh.sources.documents import MAX_DIRECTORY_BYTES, Document
from nodemesh.sources.errors import SourceDirectoryError
from nodemesh.sources.inotify import DirectoryWatch
from nodemesh.sources.placement import FileProblem, Placement, place_documents
from nodemesh.sources.reading import FileState, read_file

log = structlog.get_logger("nodemesh.sources.files")

__all__ = ["FileProblem", "FileSource"]

_SUFFIXES = (".yaml", ".yml")
# A file modified this recently is re-read even with an unchanged stat: a
# rewrite of equal size within one mtime tick would otherwise go unseen.
_RECENT_SECONDS = 2.0
DEFAULT_SETTLE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class _Listing:
    names: list[str]
    broken: dict[str, str]  # entry name -> why it cannot be read


class FileSource:
    """Feeds one directory's manifests into `store` under `source_name`."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        store: MeshStore,
        source_name: str = "files",
        poll_interval: float = 0.5,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        inotify: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self._store = store
        self._source = source_name
        self._interval = poll_interval
        self._settle = settle_seconds
        self._clock = clock
        self._inotify = inotify  # False: poll only (benchmarks compare both)
        self._files: dict[str, FileState] = {}
        # name -> (stamp seen, or None while missing; since when, by `clock`)
        self._pending: dict[str, tuple[tuple[int, int] | None, float]] = {}
        self._dir_error: FileProblem | None = None
        self._placement = Placement()

    @property
    def source_name(self) -> str:
        """The name this source's objects are held under in the store."""
        return self._source

    @property
    def errors(self) -> tuple[FileProblem, ...]:
        """Current problems: unreadable directory or entries, YAML errors,
        documents that are not usable objects."""
        found = [s.error for _, s in sorted(self._files.items()) if s.error is not None]
        if self._dir_error is not None:
            found.insert(0, self._dir_error)
        return (*found, *self._placement.problems)

    @property
    def warnings(self) -> tuple[FileProblem, ...]:
        """Objects defined twice, and documents of kinds the mesh does not model."""
        return self._placement.warnings

    def load(self) -> bool:
        """Scan once, synchronously, without settling. True when the store was
        given new content."""
        return self._publish(self._scan(settle=False))

    # -- the Source protocol (nodemesh.sources.base) ------------------------

    @property
    def name(self) -> str:
        return str(self.directory)

    async def open(self) -> None:
        # Synchronously, before the first model: it includes every file, not
        # a partial set. A missing directory is reported, not fatal.
        self.load()

    async def wait_synced(self) -> None:
        """Synced once opened: `open` read every file."""

    async def close(self) -> None:
        """Nothing to release."""

    def not_ready_reasons(self) -> list[str]:
        # A broken file or document keeps its last good content and is only
        # reported; an unreadable directory means the model may miss objects.
        if not self.directory.is_dir():
            return [f"source directory {self.directory} is not readable"]
        return []

    def problems(self) -> list[str]:
        """Every document or entry this source could not use, one line each
        (errors first, then skipped kinds and duplicates)."""
        return [str(p) for p in self.errors] + [f"warning: {w}" for w in self.warnings]

    async def poll(self, watch: DirectoryWatch | None = None) -> bool:
        """Scan once without blocking the event loop (reading and YAML parsing
        run in a thread); changed files are read once their writes settled
        (files `watch` saw closed after writing count as settled)."""
        complete = watch.complete() if watch is not None else {}
        scanned = await asyncio.to_thread(self._scan, True, complete)
        if watch is not None:
            watch.consumed(complete)
        return self._publish(scanned)

    async def run(self) -> None:
        """Poll until cancelled: at once on an inotify event, else every
        `poll_interval` (the fallback, and the clock of the settle window)."""
        log.info("file_source_started", directory=str(self.directory), source=self._source)
        watch: DirectoryWatch | None = None
        try:
            while True:
                if watch is None and self._inotify and self.directory.is_dir():
                    watch = DirectoryWatch.open(self.directory)
                if watch is not None:
                    watch.changed.clear()  # events from here on wake the next wait
                await self.poll(watch)
                if watch is None:
                    await asyncio.sleep(self._interval)
                    continue
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow
                # a cancellation that races the event.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await watch.changed.wait()
        finally:
            if watch is not None:
                watch.close()

    def _list(self) -> _Listing | SourceDirectoryError:
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            return SourceDirectoryError(f"cannot list {self.directory}: {exc.strerror}")
        names: list[str] = []
        broken: dict[str, str] = {}
        for entry in entries:
            if not entry.name.endswith(_SUFFIXES) or entry.name.startswith("."):
                continue
            try:
                if entry.is_file():
                    names.append(entry.name)
            except OSError as exc:
                # A symlink loop (ELOOP) or a dangling permission: this entry
                # only; the rest of the directory is read as usual.
                broken[entry.name] = f"cannot read: {exc.strerror}; skipped"
        return _Listing(sorted(names), broken)

    def _scan(
        self, settle: bool, complete: Mapping[str, int] = MappingProxyType({})
    ) -> dict[str, FileState] | SourceDirectoryError:
        """New per-file state; reads only the filesystem and this source's own
        bookkeeping (never the store), so it may run in a thread."""
        listing = self._list()
        if isinstance(listing, SourceDirectoryError):
            return listing
        now = time.time()
        out: dict[str, FileState] = {}
        budget = MAX_DIRECTORY_BYTES
        for name in sorted([*listing.names, *listing.broken]):
            path = self.directory / name
            old = self._files.get(name)
            try:
                stat = path.stat()
            except OSError as exc:
                reason = listing.broken.get(name) or f"cannot read: {exc.strerror}; skipped"
                out[name] = FileState.failed(old, FileProblem(str(path), reason))
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            budget -= stat.st_size
            if budget < 0:
                reason = f"the directory's files exceed {MAX_DIRECTORY_BYTES >> 20} MiB; skipped"
                out[name] = FileState.failed(old, FileProblem(str(path), reason))
                continue
            recent = now - stat.st_mtime_ns / 1e9 < _RECENT_SECONDS
            if old is not None and old.stamp == stamp and not recent:
                out[name] = old
                self._pending.pop(name, None)
                continue
            written = name in complete and stat.st_size > 0  # closed by its writer
            if written:
                self._pending.pop(name, None)
            if (
                settle
                and not written
                and not self._settled(name, stamp, now - stat.st_mtime_ns / 1e9)
            ):
                if old is not None:
                    out[name] = old  # being written: the last content stays
                continue
            state = read_file(path, stamp, old)
            if state is None:  # changed while it was read: next poll
                if old is not None:
                    out[name] = old
                continue
            out[name] = state
        if settle:
            self._keep_vanished(out)
        return out

    def _settled(self, name: str, stamp: tuple[int, int], age: float) -> bool:
        """Whether a changed file has been quiet for the settle window: by its
        mtime, or (for clocks that disagree, mtimes in the future) by the same
        stamp seen over the window by this process."""
        if age >= self._settle:
            self._pending.pop(name, None)
            return True
        now = self._clock()
        seen = self._pending.get(name)
        if seen is None or seen[0] != stamp:
            self._pending[name] = (stamp, now)
            return False
        if now - seen[1] >= self._settle:
            del self._pending[name]
            return True
        return False

    def _keep_vanished(self, out: dict[str, FileState]) -> None:
        """A file gone for less than the settle window keeps its content: a
        delete-and-recreate must not withdraw its objects in between."""
        now = self._clock()
        for name, state in self._files.items():
            if name in out:
                continue
            seen = self._pending.get(name)
            if seen is None or seen[0] is not None:
                self._pending[name] = (None, now)
                out[name] = state
            elif now - seen[1] < self._settle:
                out[name] = state
            else:
                del self._pending[name]

    def _publish(self, scanned: dict[str, FileState] | SourceDirectoryError) -> bool:
        if isinstance(scanned, SourceDirectoryError):
            if self._dir_error is None:
                log.error(
                    "file_source_directory_error",
                    directory=str(self.directory),
                    reason=str(scanned),
                )
            self._dir_error = FileProblem(str(self.directory), str(scanned))
            return False
        self._dir_error = None
        before = self._files
        self._files = scanned
        changed = before.keys() != scanned.keys() or any(
            before[n].digest != s.digest or before[n].error != s.error for n, s in scanned.items()
        )
        if not changed:
            return False
        self._log_changes(before, scanned)
        files: list[tuple[str, tuple[Document, ...]]] = [
            (str(self.directory / name), state.docs) for name, state in sorted(scanned.items())
        ]
        previous = self._placement
        self._placement = place_documents(files, previous)
        self._log_placement(previous)
        raws: list[Mapping[str, Any]] = list(self._placement.chosen.values())
        self._store.replace_all(self._source, raws)
        return True

    def _log_placement(self, previous: Placement) -> None:
        for problem in self._placement.problems:
            if problem not in previous.problems:
                log.error(
                    "file_source_object_error",
                    file=problem.path,
                    line=problem.line,
                    reason=problem.reason,
                )
        for warning in self._placement.warnings:
            if warning not in previous.warnings:
                log.warning(
                    "file_source_warning",
                    file=warning.path,
                    line=warning.line,
                    reason=warning.reason,
                )

    def _log_changes(self, before: dict[str, FileState], after: dict[str, FileState]) -> None:
        for name in sorted(before.keys() - after.keys()):
            log.info("file_source_file_removed", file=str(self.directory / name))
        for name, state in sorted(after.items()):
            old = before.get(name)
            if old is not None and old.digest == state.digest and old.error == state.error:
                continue
            if state.error is not None:
                log.error(
                    "file_source_parse_error",
                    file=state.error.path,
                    line=state.error.line,
                    reason=state.error.reason,
                    kept_previous=bool(state.docs),
                )
            else:
                log.info(
                    "file_source_file_loaded",
                    file=str(self.directory / name),
                    documents=len(state.docs),
                )
