"""`InformerSet`: every informer in one TaskGroup, feeding one ObjectSink."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog

from nodemesh.k8s_watch.health import WatchHealth
from nodemesh.k8s_watch.informer import Informer, ObjectMeta
from nodemesh.k8s_watch.resources import ResourceSpec, default_resources
from nodemesh.k8s_watch.settings import WatchSettings
from nodemesh.k8s_watch.sink import ObjectSink
from nodemesh.k8s_watch.watching import WatchApi

log = structlog.get_logger("nodemesh.k8s_watch")


class InformerSet:
    """Runs until cancelled. An unreachable API server never ends it: each
    informer retries on its own, and what the sink holds keeps serving.

    `on_change` is called (synchronously, from the event loop) after every
    batch that changed the sink, so the owner can rebuild the model; it should
    coalesce, as a burst of events calls it many times.
    """

    def __init__(
        self,
        api: WatchApi,
        sink: ObjectSink,
        *,
        settings: WatchSettings | None = None,
        resources: Iterable[ResourceSpec] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings or WatchSettings()
        self.health = WatchHealth()
        specs = tuple(resources) if resources is not None else default_resources()
        self.informers = [
            Informer(spec, api, sink, self.settings, self.health, on_change) for spec in specs
        ]

    def lookup(self, kind: str, namespace: str, name: str) -> ObjectMeta | None:
        """Metadata of a watched object, or None if it is not (or no longer) known."""
        for informer in self.informers:
            if informer.spec.kind.value == kind:
                return informer.meta(namespace, name)
        return None

    async def run(self) -> None:
        log.info("watching", resources=[str(i.spec) for i in self.informers])
        async with asyncio.TaskGroup() as tg:
            for informer in self.informers:
                tg.create_task(informer.run(), name=f"informer:{informer.spec}")

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Until every informer has delivered its first list."""
        async with asyncio.timeout(timeout):
            await self.health.synced_event.wait()
