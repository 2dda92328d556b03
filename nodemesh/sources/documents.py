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


def load_documents(text: str) -> list[Document]:
    """Every non-empty document of `text`, with its line. Raises what the YAML
    library raises for malformed input (yaml.YAMLError, ValueError,
    RecursionError). A document that is not a mapping raises ValueError."""
    loader = _Loader(text)
    found: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            line = node.start_mark.line + 1
            size = node.end_mark.index - node.start_mark.index
            if size > MAX_OBJECT_BYTES:
                reason = (
                    f"object is {_mib(size)} of YAML; objects are limited to "
                    f"{_mib(MAX_OBJECT_BYTES)} (the Kubernetes API server's limit)"
                )
                found.append(Document(None, line, reason))
                continue
            data = loader.construct_document(node)
            if data is None:
                continue
            if not isinstance(data, Mapping):
                raise NotAMapping(len(found) + 1, line)
            found.append(Document(data, line))
    finally:
        loader.dispose()
    return found


class NotAMapping(ValueError):
    def __init__(self, index: int, line: int) -> None:
        self.line = line
        super().__init__(f"document {index} is not a mapping (a Kubernetes object)")
