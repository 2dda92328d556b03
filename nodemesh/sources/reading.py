"""One manifest file read into documents, or the problem that stopped it."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from nodemesh.sources.documents import Document, NotAMapping, load_documents, oversize_file
from nodemesh.sources.placement import FileProblem


@dataclass(frozen=True, slots=True)
class FileState:
    stamp: tuple[int, int]  # (mtime_ns, size)
    digest: str
    docs: tuple[Document, ...]  # the last content that parsed
    error: FileProblem | None = None

    @staticmethod
    def failed(old: FileState | None, problem: FileProblem) -> FileState:
        """The file cannot be read now: its last good content stays."""
        if old is None:
            return FileState((0, 0), "", (), problem)
        return FileState(old.stamp, old.digest, old.docs, problem)


def read_file(path: Path, stamp: tuple[int, int], old: FileState | None) -> FileState | None:
    """The file's new state; None when it changed while being read (a writer
    is still at it: try again next poll)."""
    kept = old.docs if old is not None else ()
    too_big = oversize_file(stamp[1])
    if too_big is not None:
        return FileState(stamp, "", kept, FileProblem(str(path), too_big))
    try:
        with path.open("rb") as handle:
            data = handle.read()
            after = os.fstat(handle.fileno())
    except OSError as exc:
        return FileState(stamp, "", kept, FileProblem(str(path), f"cannot read: {exc.strerror}"))
    if (after.st_mtime_ns, after.st_size) != stamp or len(data) != stamp[1]:
        return None
    digest = hashlib.sha256(data).hexdigest()
    if old is not None and old.digest == digest:
        return FileState(stamp, digest, old.docs, old.error)
    try:
        docs = load_documents(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return FileState(stamp, digest, kept, FileProblem(str(path), f"not UTF-8: {exc.reason}"))
    except yaml.YAMLError as exc:
        return FileState(stamp, digest, kept, _yaml_problem(path, exc))
    except NotAMapping as exc:
        return FileState(stamp, digest, kept, FileProblem(str(path), str(exc), exc.line))
    except (ValueError, RecursionError) as exc:
        # What the YAML library lets through for pathological input (absurd
        # nesting, out-of-range values): still this file's problem only.
        return FileState(stamp, digest, kept, FileProblem(str(path), f"cannot load: {exc!r}"))
    return FileState(stamp, digest, tuple(docs))


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> FileProblem:
    line = None
    reason = str(exc)
    offset = int(getattr(exc, "line_offset", 0))  # set by load_documents
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            line = mark.line + 1 + offset
        context = exc.context or ""
        if context and exc.context_mark is not None and exc.context_mark is not mark:
            # Where the unfinished construct began is often what the user must fix.
            context = f"{context} (from line {exc.context_mark.line + 1 + offset})"
        reason = " ".join(p for p in (context, exc.problem) if p) or reason
    return FileProblem(str(path), f"invalid YAML: {reason}", line)
