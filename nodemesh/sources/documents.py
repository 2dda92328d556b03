"""Reading one manifest file into documents, within documented size limits.

Limits (docs/semantics.md, "Size limits"):
- a file larger than `MAX_FILE_BYTES` is not read at all (its last good
  content stays in effect and the file is reported);
- a document larger than `MAX_OBJECT_BYTES` of YAML text is refused, as the
  Kubernetes API server refuses an object over etcd's 1.5 MiB request limit
  (its previous version stays in effect and the document is reported);
- a directory whose files add up to more than `MAX_DIRECTORY_BYTES` reads
  files in name order until the budget is spent; the rest are reported.

These bound the work one change can cost the control plane (parsing and
translating run off the event loop, but still take CPU and memory).
"""

from __future__ import annotations

import gc
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_OBJECT_BYTES = 1536 * 1024
MAX_DIRECTORY_BYTES = 128 * 1024 * 1024

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document of a file: its content (None when it was refused),
    the 1-based line it starts on, and why it was refused."""

    data: Mapping[str, Any] | None
    line: int
    refused: str = ""


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def oversize_file(size: int) -> str | None:
    if size > MAX_FILE_BYTES:
        return f"file is {_mib(size)}; files are limited to {_mib(MAX_FILE_BYTES)}"
    return None


# A line starting a new YAML document. In a stream, such a line ends the
# document before it wherever it appears (even inside a block scalar).
_MARKER = re.compile(r"^---(?=[ \t\r\n]|$)", re.MULTILINE)


def _chunks(text: str) -> list[tuple[int, str]]:
    """(first line, text) of each document of a stream, split without parsing
    so that an oversized one is refused before costing any parsing work."""
    starts = [0] + [m.start() for m in _MARKER.finditer(text) if m.start() > 0]
    ends = [*starts[1:], len(text)]
    out = []
    line = 1
    for start, end in zip(starts, ends, strict=True):
        out.append((line, text[start:end]))
        line += text.count("\n", start, end)
    return out


def load_documents(text: str) -> list[Document]:
    """Every non-empty document of `text`, with its line. Raises what the YAML
    library raises for malformed input (yaml.YAMLError, ValueError,
    RecursionError). A document that is not a mapping raises ValueError."""
    found: list[Document] = []
    # The cyclic GC would rescan the growing heap again and again while a big
    # file is built (measured: over a second of collections for a 1.5 MiB
    # object, holding the GIL the event loop needs); YAML data is acyclic.
    paused = gc.isenabled()
    gc.disable()
    try:
        for first_line, chunk in _chunks(text):
            _load_chunk(chunk, first_line, found)
    finally:
        if paused:
            gc.enable()
    return found


def _load_chunk(chunk: str, first_line: int, found: list[Document]) -> None:
    size = len(chunk.encode())
    if size > MAX_OBJECT_BYTES:
        line = first_line + (1 if chunk.startswith("---") and chunk.count("\n") else 0)
        reason = (
            f"object is {_mib(size)} of YAML; objects are limited to "
            f"{_mib(MAX_OBJECT_BYTES)} (the Kubernetes API server's limit)"
        )
        found.append(Document(None, line, reason))
        return
    loader = _Loader(chunk)
    try:
        _load_nodes(loader, first_line, found)
    except yaml.YAMLError as exc:
        # Marks count from the chunk; the file's line is what the user needs.
        exc.line_offset = first_line - 1  # type: ignore[attr-defined]
        raise
    finally:
        loader.dispose()


def _load_nodes(loader: Any, first_line: int, found: list[Document]) -> None:
    while loader.check_node():
        node = loader.get_node()
        if node is None:
            break
        data = loader.construct_document(node)
        if data is None:
            continue
        line = first_line + node.start_mark.line
        if not isinstance(data, Mapping):
            raise NotAMapping(len(found) + 1, line)
        found.append(Document(data, line))


class NotAMapping(ValueError):
    def __init__(self, index: int, line: int) -> None:
        self.line = line
        super().__init__(f"document {index} is not a mapping (a Kubernetes object)")
