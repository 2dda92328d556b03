"""List/watch as layered async generators.

From the inside out:

- `watch_once`: one watch request from a resourceVersion. Yields `Changed`
  and `Bookmark`; turns an ERROR event into an exception (410 ->
  `ResourceGone`); logs and skips unparseable lines and unknown event types.
- `list_all`: one consistent list, page by page (limit/continue).
- `informer_stream`: forever. Lists (yielding `Listed`, the full set), then
  watches from that list's resourceVersion, advancing it with every event
  and bookmark. A watch that ends (server timeout) or breaks (dropped
  connection) resumes from the last resourceVersion without a relist; 410
  relists; an unreachable server is retried with backoff and jitter.

Nothing here knows about the model: the informer turns these items into
ObjectSink calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import structlog
from prometheus_client import Counter

from nodemesh.k8s_watch.backoff import Backoff
from nodemesh.k8s_watch.client import ListPage
from nodemesh.k8s_watch.errors import (
    ApiRejected,
    ApiUnavailable,
    K8sWatchError,
    MalformedResponse,
    ResourceGone,
)
from nodemesh.k8s_watch.health import WatchHealth
from nodemesh.k8s_watch.resources import ResourceSpec
from nodemesh.k8s_watch.settings import WatchSettings

log = structlog.get_logger("nodemesh.k8s_watch")

Raw = dict[str, Any]

EVENTS = Counter("nodemesh_k8s_watch_events_total", "Watch events received", ["resource", "type"])
RELISTS = Counter("nodemesh_k8s_relists_total", "Full lists, by cause", ["resource", "cause"])
SKIPPED = Counter(
    "nodemesh_k8s_skipped_total", "Watch lines or objects skipped as malformed", ["resource"]
)


class WatchApi(Protocol):
    """What the generators need of the HTTP layer (KubeApi implements it)."""

    async def list_page(self, spec: ResourceSpec, continue_token: str = "") -> ListPage: ...

    def watch(self, spec: ResourceSpec, resource_version: str) -> AsyncGenerator[bytes, None]: ...


@dataclass(frozen=True, slots=True)
class Listed:
    """A complete list: the whole current set of objects at `resource_version`,
    each passed through the caller's `prepare` (None results left out)."""

    items: list[Any]
    resource_version: str


@dataclass(frozen=True, slots=True)
class Changed:
    type: str  # ADDED, MODIFIED or DELETED
    obj: Raw


@dataclass(frozen=True, slots=True)
class Bookmark:
    resource_version: str


@dataclass(frozen=True, slots=True)
class Connected:
    """The watch request was accepted: the server is reachable again."""


def _as_is(item: Raw) -> Any:
    return item


async def list_all(
    api: WatchApi,
    spec: ResourceSpec,
    prepare: Callable[[Raw], Any] = _as_is,
    *,
    prefetch: bool = True,
) -> Listed:
    """All pages of one list. The resourceVersion is the first page's: every
    continuation is served from that same snapshot, or fails with 410.

    `prepare` runs on each page as it arrives, so a large cluster never has
    every object as parsed JSON in memory at once, only one page (and the
    next, which is already requested while this one is prepared: the server
    encodes it while we work)."""
    page = await api.list_page(spec)
    rv, items = page.resource_version, list[Any]()
    while True:
        token, ahead = page.continue_token, None
        if token and prefetch:
            ahead = asyncio.create_task(api.list_page(spec, token), name=f"list-ahead:{spec}")
        try:
            if ahead is not None:
                await asyncio.sleep(0)  # let it send the request before we go busy
            items.extend(p for p in map(prepare, page.items) if p is not None)
        except BaseException:
            if ahead is not None:
                ahead.cancel()  # (cancelling a task that awaits it cancels it too)
            raise
        if not token:
            break
        page = await (ahead if ahead is not None else api.list_page(spec, token))
    return Listed(items, rv)


def _error_event(spec: ResourceSpec, status: Any) -> K8sWatchError:
    code = status.get("code", 0) if isinstance(status, dict) else 0
    message = status.get("message", "") if isinstance(status, dict) else str(status)
    if code == 410:
        return ResourceGone(message)
    if code == 429 or code >= 500 or code == 0:
        return ApiUnavailable(f"watch {spec}: ERROR event {code}: {message}")
    return ApiRejected(code, message)


async def watch_once(
    api: WatchApi, spec: ResourceSpec, resource_version: str
) -> AsyncGenerator[Changed | Bookmark | Connected, None]:
    resource = str(spec)
    async with contextlib.aclosing(api.watch(spec, resource_version)) as lines:
        async for line in lines:
            if not line:
                yield Connected()
                continue
            try:
                event = orjson.loads(line)
                etype, obj = event["type"], event["object"]
            except (ValueError, TypeError, KeyError) as exc:
                SKIPPED.labels(resource).inc()
                log.warning(
                    "watch_line_skipped", resource=resource, error=str(exc), line=line[:200]
                )
                continue
            EVENTS.labels(resource, str(etype)).inc()
            if etype == "ERROR":
                raise _error_event(spec, obj)
            if etype == "BOOKMARK":
                rv = (
                    obj.get("metadata", {}).get("resourceVersion")
                    if isinstance(obj, dict)
                    else None
                )
                if rv:
                    yield Bookmark(str(rv))
            elif etype in ("ADDED", "MODIFIED", "DELETED") and isinstance(obj, dict):
                yield Changed(etype, obj)
            else:
                log.warning("unknown_watch_event_skipped", resource=resource, type=etype)


def _rv_of(obj: Raw) -> str | None:
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return str(rv) if rv else None


async def informer_stream(
    api: WatchApi,
    spec: ResourceSpec,
    settings: WatchSettings,
    health: WatchHealth,
    prepare: Callable[[Raw], Any] = _as_is,
) -> AsyncIterator[Listed | Changed]:
    """List, then watch, forever. See the module docstring for the rules."""
    resource, backoff = str(spec), Backoff(settings)
    rv: str | None = None
    cause = "initial"
    while True:
        try:
            if rv is None:
                listed = await list_all(api, spec, prepare, prefetch=settings.list_prefetch)
                RELISTS.labels(resource, cause).inc()
                log.info("listed", resource=resource, count=len(listed.items), cause=cause)
                rv = listed.resource_version
                health.ok(resource, listed=True)
                backoff.reset()
                yield listed
            delivered = False
            # aclosing: the watch's HTTP response is released the moment we
            # stop reading (an error, or our consumer going away), not at GC.
            async with contextlib.aclosing(watch_once(api, spec, rv)) as items:
                async for item in items:
                    if isinstance(item, Connected):
                        health.ok(resource)
                        continue
                    delivered = True
                    backoff.reset()
                    if isinstance(item, Bookmark):
                        rv = item.resource_version
                        continue
                    rv = _rv_of(item.obj) or rv
                    yield item
            if not delivered:
                # A server ending watches at once must not spin us in a hot loop.
                await asyncio.sleep(backoff.next())
        except ResourceGone as exc:
            # History we need is gone: only a fresh list tells us what is true now.
            log.info("resource_version_expired_relisting", resource=resource, error=str(exc))
            if cause == "gone" and rv is None:
                await asyncio.sleep(backoff.next())  # 410 on the relist itself
            rv, cause = None, "gone"
        except (ApiUnavailable, ApiRejected, MalformedResponse) as exc:
            health.failed(resource, exc)
            delay = backoff.next()
            log.warning(
                "list_watch_failed_retrying",
                resource=resource,
                error=str(exc),
                retry_in=round(delay, 2),
                attempt=backoff.attempts,
            )
            await asyncio.sleep(delay)
            if rv is None:
                cause = "retry"
