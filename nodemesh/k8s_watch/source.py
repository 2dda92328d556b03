"""`KubernetesSource`: the Kubernetes side of a nodemesh process, in one object.

It watches the API server into a MeshStore and, when asked to, reports
conditions and Events back from every model the store publishes. The
process that owns the store (the agent or `nodemesh serve`) runs it in its
own TaskGroup beside the xDS server and the datapath.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog

from nodemesh.k8s_watch.client import KubeApi
from nodemesh.k8s_watch.conditions import NackSource
from nodemesh.k8s_watch.health import WatchHealth
from nodemesh.k8s_watch.informer_set import InformerSet
from nodemesh.k8s_watch.reporter import StatusReporter
from nodemesh.k8s_watch.resources import ResourceSpec
from nodemesh.k8s_watch.settings import WatchSettings
from nodemesh.model.objects import ObjectError
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore

log = structlog.get_logger("nodemesh.k8s_watch")


class KubernetesSource:
    def __init__(
        self,
        api: KubeApi,
        store: MeshStore,
        *,
        node: str,
        settings: WatchSettings | None = None,
        resources: Iterable[ResourceSpec] | None = None,
        report_status: bool = True,
        nacks: NackSource | None = None,
        translation_errors: Callable[[], Iterable[ObjectError]] | None = None,
        retry_interval: float = 5.0,
    ) -> None:
        self.settings = settings or WatchSettings()
        self.api = api
        self.store = store
        self.watch = InformerSet(api, store, settings=self.settings, resources=resources)
        self.reporter = (
            StatusReporter(api, self.watch, node=node, settings=self.settings)
            if report_status
            else None
        )
        self._nacks = nacks
        self._translation_errors = translation_errors
        self._retry_interval = retry_interval
        self._latest: MeshModel | None = None
        self._wake = asyncio.Event()

    @property
    def health(self) -> WatchHealth:
        return self.watch.health

    # -- the Source protocol (nodemesh.sources.base) ------------------------

    @property
    def name(self) -> str:
        return "kubernetes"

    async def open(self) -> None:
        await self.api.open()

    async def close(self) -> None:
        await self.api.close()

    async def wait_synced(self) -> None:
        # A model from a partial list would withdraw Envoy config and kernel
        # redirects for objects not listed yet; readiness says what is being
        # waited for meanwhile.
        await self.watch.wait_synced()

    def not_ready_reasons(self) -> list[str]:
        return [f"kubernetes: {reason}" for reason in self.health.reasons()]

    def problems(self) -> list[str]:
        return list(self.health.reasons())

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.watch.run(), name="k8s-watch")
            if self.reporter is not None:
                tg.create_task(self._follow_models(), name="k8s-model-follow")
                tg.create_task(
                    self.reporter.run(
                        lambda: self._latest,
                        self._wake,
                        self._nacks,
                        self._retry_interval,
                        self._translation_errors,
                    ),
                    name="k8s-status-reporter",
                )

    def nacks_changed(self) -> None:
        """The xDS side calls this when a NACK arrives or clears, so conditions
        follow without waiting for the retry interval."""
        self._wake.set()

    async def _follow_models(self) -> None:
        await self.watch.wait_synced()
        async for model in self.store.updates():
            self._latest = model
            self._wake.set()
