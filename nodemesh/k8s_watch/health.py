"""What the watcher knows about its own state, for readiness probes and status.

While the API server is unreachable nothing is torn down: the last model keeps
serving, and this object says which resources are stale, since when, and why.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

SYNCED = Gauge("nodemesh_k8s_synced", "1 when the resource's informer is in sync", ["resource"])
WATCH_ERRORS = Counter(
    "nodemesh_k8s_watch_errors_total", "Failed lists and watches", ["resource", "error"]
)


@dataclass(slots=True)
class ResourceHealth:
    """One informer. `synced` stays True once the first list landed: the data
    is still served during an outage; `error`/`error_since` say it may be stale."""

    resource: str
    synced: bool = False
    last_sync: float | None = None
    error: str | None = None
    error_since: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "synced": self.synced,
            "last_sync": self.last_sync,
            "error": self.error,
            "error_since": self.error_since,
        }


@dataclass(slots=True)
class WatchHealth:
    resources: dict[str, ResourceHealth] = field(default_factory=dict)
    synced_event: asyncio.Event = field(default_factory=asyncio.Event)

    def register(self, resource: str) -> None:
        self.resources.setdefault(resource, ResourceHealth(resource))
        SYNCED.labels(resource).set(0)

    def ok(self, resource: str, *, listed: bool = False) -> None:
        entry = self.resources.setdefault(resource, ResourceHealth(resource))
        if listed:
            entry.synced = True
            entry.last_sync = time.time()
            SYNCED.labels(resource).set(1)
            if self.synced:
                self.synced_event.set()
        entry.error = entry.error_since = None

    def failed(self, resource: str, error: BaseException) -> None:
        entry = self.resources.setdefault(resource, ResourceHealth(resource))
        if entry.error_since is None:
            entry.error_since = time.time()
        entry.error = f"{type(error).__name__}: {error}"
        WATCH_ERRORS.labels(resource, type(error).__name__).inc()

    @property
    def synced(self) -> bool:
        """Every informer has delivered its first full list."""
        return bool(self.resources) and all(r.synced for r in self.resources.values())

    @property
    def ready(self) -> bool:
        """Synced and currently connected: the model is known to be fresh."""
        return self.synced and all(r.error is None for r in self.resources.values())

    def reasons(self) -> list[str]:
        """Why not ready, one line per resource; empty when ready."""
        out = []
        for r in sorted(self.resources.values(), key=lambda r: r.resource):
            if r.error is not None:
                since = time.strftime("%H:%M:%S", time.gmtime(r.error_since or 0))
                state = "serving last known state" if r.synced else "never synced"
                out.append(f"{r.resource}: {state}; failing since {since}Z: {r.error}")
            elif not r.synced:
                out.append(f"{r.resource}: initial list not done yet")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "synced": self.synced,
            "reasons": self.reasons(),
            "resources": {k: v.as_dict() for k, v in sorted(self.resources.items())},
        }
