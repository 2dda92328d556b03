"""The seam between the watcher and the mesh model store."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class ObjectSink(Protocol):
    """Where watched objects go. The mesh model store implements it.

    `source` scopes every call: each informer passes its own, so a relist
    (`replace_all`) of one resource type never touches objects of another,
    nor those the file source fed. `raw` is the object as the API server sent
    it, with `apiVersion` and `kind` always filled in, without what changes on
    every write (resourceVersion, managedFields, generation, kubectl's
    last-applied annotation) or a status nodemesh writes itself, and held as
    an immutable `CompactObject` (a read-only Mapping) to keep memory small.

    `apply` may raise nodemesh.model.errors.ParseError for an object it cannot
    even identify; `replace_all` may return such errors for skipped objects.
    Everything else wrong with an object is the model's to report
    (MeshModel.errors), not the sink's to raise.
    """

    def apply(self, source: str, raw: Mapping[str, Any]) -> object: ...

    def delete(self, source: str, kind: str, namespace: str, name: str) -> object: ...

    def replace_all(self, source: str, raws: Iterable[Mapping[str, Any]]) -> object: ...
