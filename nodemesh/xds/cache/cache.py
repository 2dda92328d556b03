"""The snapshot cache: the latest snapshot per node key, and its watchers.

The seam to the server is `SnapshotSource`: a stream asks for the snapshot of
its node key and registers a wake-up callback. The callback only marks the
stream dirty; the stream itself reads the latest snapshot when it is ready to
send, so a burst of updates never queues (latest state wins) and a slow stream
never delays the cache or other streams.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import Protocol

import structlog
from envoy.config.core.v3 import base_pb2
from google.protobuf.message import Message

from nodemesh.xds.cache.snapshot import Snapshot
from nodemesh.xds.metrics import SNAPSHOT_BUILD_SECONDS

log = structlog.get_logger("nodemesh.xds.cache")

NodeHash = Callable[[base_pb2.Node], str]
Notify = Callable[[], None]
Cancel = Callable[[], None]


def node_id_hash(node: base_pb2.Node) -> str:
    """Default grouping: one key per node id."""
    return str(node.id)


class SnapshotSource(Protocol):
    """What a stream needs from the cache (the one server/cache seam)."""

    def node_key(self, node: base_pb2.Node) -> str:
        """Key under which this node's snapshot is stored."""
        ...

    def snapshot(self, key: str) -> Snapshot | None:
        """Latest snapshot for `key` (or the default one), None if none yet."""
        ...

    def watch(self, key: str, notify: Notify) -> Cancel:
        """Call `notify()` (synchronously, cheaply) whenever `key`'s snapshot
        changes; the returned function cancels the watch."""
        ...

    def removals_held(self, key: str) -> bool:
        """True while the wiring holds back every removal of serving
        resources for `key` (the node agent, until its kernel redirects have
        moved off the listeners the removals would take away)."""
        ...


class SnapshotCache:
    """Latest snapshot per node key, with an optional default for every node
    that has no snapshot of its own."""

    def __init__(self, node_hash: NodeHash = node_id_hash) -> None:
        self._node_hash = node_hash
        self._snapshots: dict[str, Snapshot] = {}
        self._default: Snapshot | None = None
        self._watches: dict[str, dict[int, Notify]] = {}
        self._next_watch = 0
        self._removal_holds = 0

    # -- the SnapshotSource seam -------------------------------------------------

    def node_key(self, node: base_pb2.Node) -> str:
        return self._node_hash(node)

    def snapshot(self, key: str) -> Snapshot | None:
        return self._snapshots.get(key, self._default)

    def watch(self, key: str, notify: Notify) -> Cancel:
        self._next_watch += 1
        watch_id = self._next_watch
        self._watches.setdefault(key, {})[watch_id] = notify

        def cancel() -> None:
            watchers = self._watches.get(key)
            if watchers is not None:
                watchers.pop(watch_id, None)
                if not watchers:
                    del self._watches[key]

        return cancel

    def removals_held(self, key: str) -> bool:
        return self._removal_holds > 0

    # -- the API for the wiring code ----------------------------------------------

    def hold_removals(self) -> None:
        """Until the matching `release_removals`, no stream withdraws a
        listener, route or cluster its client holds (additions and changes
        still flow). Nests."""
        self._removal_holds += 1

    def release_removals(self) -> None:
        """End one `hold_removals`; streams re-evaluate what they held."""
        self._removal_holds = max(0, self._removal_holds - 1)
        if not self._removal_holds:
            for watchers in list(self._watches.values()):
                self._notify(watchers)

    def build_snapshot(
        self,
        resources: Mapping[str, Mapping[str, Message]],
        label: str,
        key: str | None = None,
        named_only: Mapping[str, AbstractSet[str]] | None = None,
    ) -> Snapshot:
        """Encode `resources`, reusing encodings from the current snapshot of
        `key` (or the default one). Records nodemesh_xds_snapshot_build_seconds.
        `named_only` (type URL -> names, the translator's `named_only`) are
        served only to clients that ask for them by name, never to a wildcard."""
        started = time.perf_counter()
        previous = self._default if key is None else self.snapshot(key)
        snapshot = Snapshot.build(resources, label, previous, named_only)
        SNAPSHOT_BUILD_SECONDS.observe(time.perf_counter() - started)
        return snapshot

    def set_snapshot(self, key: str, snapshot: Snapshot) -> tuple[str, ...]:
        """Publish `snapshot` for one node key and wake its streams. Returns
        the consistency issues (also logged); an inconsistent snapshot is
        still published, because the translator may legitimately lag."""
        previous = self.snapshot(key)
        self._publish(snapshot, previous)
        self._snapshots[key] = snapshot
        self._notify(self._watches.get(key, {}))
        return self._report(key, snapshot)

    def set_default_snapshot(self, snapshot: Snapshot) -> tuple[str, ...]:
        """Publish `snapshot` for every node without a snapshot of its own."""
        self._publish(snapshot, self._default)
        self._default = snapshot
        for key, watchers in self._watches.items():
            if key not in self._snapshots:
                self._notify(watchers)
        return self._report("<default>", snapshot)

    def clear_snapshot(self, key: str) -> None:
        """Forget `key`'s own snapshot; its nodes fall back to the default."""
        if self._snapshots.pop(key, None) is not None:
            self._notify(self._watches.get(key, {}))

    def keys(self) -> list[str]:
        """Node keys with a snapshot of their own."""
        return sorted(self._snapshots)

    def config_dump(
        self, key: str, type_url: str | None = None
    ) -> Mapping[str, Mapping[str, Message]]:
        """What the cache holds for `key` (all types, or one), by type URL and
        name. The messages are shared: do not modify them."""
        snapshot = self.snapshot(key)
        if snapshot is None:
            return {}
        types = [type_url] if type_url is not None else sorted(snapshot.resources)
        return {t: {n: r.message for n, r in snapshot.get(t).items()} for t in types}

    # -- internals ----------------------------------------------------------------

    @staticmethod
    def _publish(snapshot: Snapshot, previous: Snapshot | None) -> None:
        if previous is not None and previous is not snapshot:
            snapshot.link(previous)

    @staticmethod
    def _notify(watchers: Mapping[int, Notify]) -> None:
        for notify in list(watchers.values()):
            notify()

    @staticmethod
    def _report(key: str, snapshot: Snapshot) -> tuple[str, ...]:
        issues = snapshot.consistency_issues()
        for issue in issues:
            log.warning("snapshot_inconsistent", node_key=key, label=snapshot.label, issue=issue)
        return issues
