"""Which object each document of a directory is, and what a failed one keeps.

A document that cannot be turned into an object (misspelled kind or
apiVersion, bad metadata.name, over the size limit) is reported with its file
and line, and the object the same document held before (matched by name in
the same file, else by position) stays in effect: a typo must not delete a
working object and its listener. A document of a kind nodemesh does not model
(a ConfigMap) that held nothing before is only skipped, with a warning.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodemesh.model.errors import ParseError, UnknownKindError
from nodemesh.model.objects import Kind, ObjectRef
from nodemesh.model.parse import object_ref
from nodemesh.sources.documents import Document

_KIND_NAMES = [k.value for k in Kind]


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
class _Slot:
    """Where an object came from: document `index` of a file, under `name`."""

    index: int
    name: str
    ref: ObjectRef


@dataclass
class Placement:
    chosen: dict[ObjectRef, Mapping[str, Any]] = field(default_factory=dict)
    problems: tuple[FileProblem, ...] = ()
    warnings: tuple[FileProblem, ...] = ()
    slots: dict[str, list[_Slot]] = field(default_factory=dict)  # path -> its objects


def _name_of(doc: Mapping[str, Any] | None) -> str:
    meta = doc.get("metadata") if doc is not None else None
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) else ""


def _typo_hint(exc: UnknownKindError) -> str:
    if exc.kind in _KIND_NAMES:
        return ""
    close = difflib.get_close_matches(exc.kind, _KIND_NAMES, n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def _previous_slot(previous: Placement, path: str, index: int, name: str) -> _Slot | None:
    slots = previous.slots.get(path, [])
    for slot in slots:
        if name and slot.name == name:
            return slot
    for slot in slots:
        if slot.index == index:
            return slot
    return None


@dataclass
class _Builder:
    previous: Placement
    out: Placement = field(default_factory=Placement)
    origin: dict[ObjectRef, str] = field(default_factory=dict)
    problems: list[FileProblem] = field(default_factory=list)
    warnings: list[FileProblem] = field(default_factory=list)

    def put(self, path: str, slot: _Slot, raw: Mapping[str, Any], line: int) -> None:
        earlier = self.origin.get(slot.ref)
        if earlier is not None:
            where = "earlier in this file" if earlier == path else f"in {earlier}"
            reason = f"{slot.ref} is also {where}; this one wins"
            self.warnings.append(FileProblem(path, reason, line))
        self.out.chosen[slot.ref] = raw
        self.origin[slot.ref] = path
        self.out.slots.setdefault(path, []).append(slot)

    def failed(self, path: str, index: int, doc: Document, reason: str, foreign: bool) -> None:
        name = _name_of(doc.data)
        slot = _previous_slot(self.previous, path, index, name)
        raw = self.previous.chosen.get(slot.ref) if slot is not None else None
        where = f"document {index + 1}: {reason}"
        if slot is not None and raw is not None and slot.ref not in self.out.chosen:
            kept = _Slot(index, slot.name, slot.ref)
            self.put(path, kept, raw, doc.line)
            where += f"; the previous version of {slot.ref} stays in effect"
        elif foreign:
            self.warnings.append(FileProblem(path, f"{where}; skipped", doc.line))
            return
        self.problems.append(FileProblem(path, where, doc.line))


def place_documents(
    files: Sequence[tuple[str, Sequence[Document]]], previous: Placement
) -> Placement:
    """Key every document of every file (later files win over earlier ones)."""
    builder = _Builder(previous)
    for path, docs in files:
        for index, doc in enumerate(docs):
            if doc.data is None:
                builder.failed(path, index, doc, doc.refused, foreign=False)
                continue
            try:
                ref = object_ref(doc.data)
            except UnknownKindError as exc:
                hint = _typo_hint(exc)
                # A kind nodemesh reads under another apiVersion, or a near miss
                # of one, is a typo (an error); anything else is another tool's.
                foreign = not hint and exc.kind not in _KIND_NAMES
                builder.failed(path, index, doc, exc.reason + hint, foreign)
                continue
            except ParseError as exc:
                builder.failed(path, index, doc, str(exc), foreign=False)
                continue
            builder.put(path, _Slot(index, ref.name, ref), doc.data, doc.line)
    builder.out.problems = tuple(builder.problems)
    builder.out.warnings = tuple(builder.warnings)
    return builder.out
