"""`CompactObject`: a watched object kept as compact JSON, read as a Mapping.

The store holds every raw object for as long as it exists, to reparse it when
something it depends on changes. As nested Python dicts an EndpointSlice of
ten endpoints takes about 14 KiB; as sorted compact JSON about 1.5 KiB, so a
50,000-endpoint cluster costs the agent about 8 MiB instead of 75 MiB.

Reads parse the JSON again; a small cache of recent parses makes the parser's
many reads of one object during a build cost one parse. orjson does the
encoding and parsing: the store reads every object twice on a full sync (to
identify it, then to parse it), and orjson makes that about 2.5x cheaper than
the json module.

The object is immutable: what a read returns must not be mutated (it may be
shared through the cache), which the store requires of raw objects anyway.
Equality is that of the canonical bytes (sorted keys), so an unchanged object
compares equal without being parsed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

import orjson


@lru_cache(maxsize=64)
def _parse(data: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(data)
    return parsed


class CompactObject(Mapping[str, Any]):
    __slots__ = ("_data",)

    def __init__(self, obj: Mapping[str, Any]) -> None:
        # orjson encodes dicts, not other Mappings; JSON from the API is dicts.
        top = obj if isinstance(obj, dict) else dict(obj)
        encoded = orjson.dumps(top, option=orjson.OPT_SORT_KEYS)
        # An exact-size copy: orjson's own result keeps its larger output
        # buffer alive (measured: about 4 KiB per object instead of 1.5 KiB).
        self._data = bytes(memoryview(encoded))

    @property
    def json(self) -> bytes:
        return self._data

    def _parsed(self) -> dict[str, Any]:
        return _parse(self._data)

    def __getitem__(self, key: str) -> Any:
        return self._parsed()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())

    def __contains__(self, key: object) -> bool:
        return key in self._parsed()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CompactObject):
            return self._data == other._data
        return isinstance(other, Mapping) and dict(self._parsed()) == dict(other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CompactObject({self._data[:80]!r}...)"
