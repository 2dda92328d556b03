"""The file source: a directory of YAML manifests, hot-reloaded.

Every `*.yaml` / `*.yml` in the directory (not in subdirectories; names
starting with "." are editor droppings and skipped) is read as a stream of
YAML documents. Each poll (0.5 s by default) stats the files and re-reads
those whose mtime or size changed, or whose mtime is recent enough that a
same-size rewrite within one timestamp tick could hide; a content hash then
decides whether anything really changed. No inotify, no extra dependency.

Failure handling, per file:
- YAML that fails to parse keeps that file's last good content in effect; the
  error (file and line) is logged and kept in `errors`.
- A deleted file deletes its objects.
- An object defined in two files: the file last in sorted order wins, with a
  warning in `warnings`.
- A document of a kind the mesh does not model is skipped with a warning.
- A missing directory is an error, and the last loaded content stays: a
  briefly unmounted volume must not tear the mesh down.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml

from nodemesh.model.errors import ParseError, UnknownKindError
from nodemesh.model.objects import ObjectRef
from nodemesh.model.parse import object_ref
from nodemesh.model.store import MeshStore
from nodemesh.sources.errors import SourceDirectoryError

log = structlog.get_logger("nodemesh.sources.files")

_SUFFIXES = (".yaml", ".yml")
# A file modified this recently is re-read even with an unchanged stat: a
# rewrite of equal size within one mtime tick would otherwise go unseen.
_RECENT_SECONDS = 2.0
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class FileProblem:
    """Something wrong with one file (or the directory). `line` is 1-based."""

    path: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class _FileState:
    stamp: tuple[int, int]  # (mtime_ns, size)
    digest: str
    docs: tuple[Mapping[str, Any], ...]  # the last content that parsed
    error: FileProblem | None = None


class FileSource:
    """Feeds one directory's manifests into `store` under `source_name`."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        store: MeshStore,
        source_name: str = "files",
        poll_interval: float = 0.5,
    ) -> None:
        self.directory = Path(directory)
        self._store = store
        self._source = source_name
        self._interval = poll_interval
        self._files: dict[str, _FileState] = {}
        self._dir_error: FileProblem | None = None
        self._object_problems: tuple[FileProblem, ...] = ()
        self._warnings: tuple[FileProblem, ...] = ()

    @property
    def source_name(self) -> str:
        """The name this source's objects are held under in the store."""
        return self._source

    @property
    def errors(self) -> tuple[FileProblem, ...]:
        """Current problems: unreadable directory, YAML errors, unusable objects."""
        found = [s.error for _, s in sorted(self._files.items()) if s.error is not None]
        if self._dir_error is not None:
            found.insert(0, self._dir_error)
        return (*found, *self._object_problems)

    @property
    def warnings(self) -> tuple[FileProblem, ...]:
        """Objects defined twice, and documents of kinds the mesh does not model."""
        return self._warnings

    def load(self) -> bool:
        """Scan once, synchronously. True when the store was given new content."""
        return self._publish(self._scan())

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
        # A broken file keeps its last good content and is only reported; an
        # unreadable directory means the model may be missing objects.
        if not self.directory.is_dir():
            return [f"source directory {self.directory} is not readable"]
        return []

    def problems(self) -> list[str]:
        return [str(problem) for problem in self.errors]

    async def poll(self) -> bool:
        """Scan once without blocking the event loop (file reads run in a thread)."""
        scanned = await asyncio.to_thread(self._scan)
        return self._publish(scanned)

    async def run(self) -> None:
        """Poll until cancelled."""
        log.info("file_source_started", directory=str(self.directory), source=self._source)
        while True:
            await self.poll()
            await asyncio.sleep(self._interval)

    def _scan(self) -> dict[str, _FileState] | SourceDirectoryError:
        """New per-file state; reads only the filesystem and `self._files`."""
        try:
            names = sorted(
                entry.name
                for entry in os.scandir(self.directory)
                if entry.name.endswith(_SUFFIXES)
                and not entry.name.startswith(".")
                and entry.is_file()
            )
        except OSError as exc:
            return SourceDirectoryError(f"cannot list {self.directory}: {exc.strerror}")
        now = time.time()
        out: dict[str, _FileState] = {}
        for name in names:
            path = self.directory / name
            try:
                stat = path.stat()
            except OSError:
                continue  # deleted between listing and stat: gone
            stamp = (stat.st_mtime_ns, stat.st_size)
            old = self._files.get(name)
            recent = now - stat.st_mtime_ns / 1e9 < _RECENT_SECONDS
            if old is not None and old.stamp == stamp and not recent:
                out[name] = old
                continue
            out[name] = _read(path, stamp, old)
        return out

    def _publish(self, scanned: dict[str, _FileState] | SourceDirectoryError) -> bool:
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
        raws = self._collect()
        self._store.replace_all(self._source, raws)
        return True

    def _collect(self) -> list[Mapping[str, Any]]:
        """Key every document; later files win over earlier ones."""
        chosen: dict[ObjectRef, tuple[str, Mapping[str, Any]]] = {}
        problems: list[FileProblem] = []
        warnings: list[FileProblem] = []
        for name, state in sorted(self._files.items()):
            path = str(self.directory / name)
            for index, doc in enumerate(state.docs):
                try:
                    ref = object_ref(doc)
                except UnknownKindError as exc:
                    warnings.append(
                        FileProblem(path, f"document {index + 1}: {exc.reason}; skipped")
                    )
                    continue
                except ParseError as exc:
                    problems.append(FileProblem(path, f"document {index + 1}: {exc}"))
                    continue
                earlier = chosen.get(ref)
                if earlier is not None:
                    where = "earlier in this file" if earlier[0] == path else f"in {earlier[0]}"
                    warnings.append(FileProblem(path, f"{ref} is also {where}; this one wins"))
                chosen[ref] = (path, doc)
        for problem in problems:
            if problem not in self._object_problems:
                log.error("file_source_object_error", file=problem.path, reason=problem.reason)
        for warning in warnings:
            if warning not in self._warnings:
                log.warning("file_source_warning", file=warning.path, reason=warning.reason)
        self._object_problems = tuple(problems)
        self._warnings = tuple(warnings)
        return [doc for _, doc in chosen.values()]

    def _log_changes(self, before: dict[str, _FileState], after: dict[str, _FileState]) -> None:
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


def _read(path: Path, stamp: tuple[int, int], old: _FileState | None) -> _FileState:
    kept = old.docs if old is not None else ()
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _FileState(stamp, "", kept, FileProblem(str(path), f"cannot read: {exc.strerror}"))
    digest = hashlib.sha256(data).hexdigest()
    if old is not None and old.digest == digest:
        return _FileState(stamp, digest, old.docs, old.error)
    try:
        docs = [d for d in yaml.load_all(data.decode("utf-8"), Loader=_Loader) if d is not None]
    except UnicodeDecodeError as exc:
        return _FileState(stamp, digest, kept, FileProblem(str(path), f"not UTF-8: {exc.reason}"))
    except yaml.YAMLError as exc:
        return _FileState(stamp, digest, kept, _yaml_problem(path, exc))
    except (ValueError, RecursionError) as exc:
        # What the YAML library lets through for pathological input (absurd
        # nesting, out-of-range values): still this file's problem only.
        return _FileState(stamp, digest, kept, FileProblem(str(path), f"cannot load: {exc!r}"))
    for index, doc in enumerate(docs):
        if not isinstance(doc, Mapping):
            reason = f"document {index + 1} is not a mapping (a Kubernetes object)"
            return _FileState(stamp, digest, kept, FileProblem(str(path), reason))
    return _FileState(stamp, digest, tuple(docs))


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> FileProblem:
    line = None
    reason = str(exc)
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            line = mark.line + 1
        context = exc.context or ""
        if context and exc.context_mark is not None and exc.context_mark is not mark:
            # Where the unfinished construct began is often what the user must fix.
            context = f"{context} (from line {exc.context_mark.line + 1})"
        reason = " ".join(p for p in (context, exc.problem) if p) or reason
    return FileProblem(str(path), f"invalid YAML: {reason}", line)
