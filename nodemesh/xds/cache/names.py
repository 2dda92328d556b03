"""Name sets shared by every stream that subscribes to the same names, and
freed with the last of them.

Every Envoy of a group asks for the same EDS/RDS names; one frozenset (and
one copy of each name) serves them all, and a snapshot memoizes its view of
those names once. Both references are weak: when the last stream holding a
set closes or changes its subscription, the set, its strings and every
snapshot view keyed by it are freed (a strong module-level cache kept 40
streams' worth of 100,000 names each, about 750 MB, after they closed).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable


class SharedNames(frozenset[str]):
    """A name set some stream holds, shared through `shared_names` (a marker
    type: frozensets are weakly referenceable already)."""

    __slots__ = ()


# hash -> the live set with that hash. A second, different set with the same
# hash is simply not shared (correct, only less thrifty).
_LIVE: weakref.WeakValueDictionary[int, SharedNames] = weakref.WeakValueDictionary()


def shared_names(names: Iterable[str]) -> SharedNames:
    """The live set equal to `names` if a stream holds one, else a new one."""
    mine = names if isinstance(names, SharedNames) else SharedNames(names)
    key = hash(mine)
    found = _LIVE.get(key)
    if found is not None and found == mine:
        return found
    if found is None:
        _LIVE[key] = mine
    return mine


def live_name_sets() -> int:
    """How many shared sets some stream still holds (for tests)."""
    return len(_LIVE)
