"""The control plane process: sources -> model -> xDS, in one event loop.

This is the one wiring module for `nodemesh serve` (and the demo): it joins
the model store and its sources, the translator, the snapshot cache, the ADS
server and the admin port. None of those know about each other; each model
version flows one way from the store to the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import prometheus_client
import structlog
from google.protobuf import json_format
from prometheus_client import Gauge

from nodemesh.model.objects import Kind, ObjectError, ObjectWarning
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore
from nodemesh.node.envoy_sync import EnvoyRejected
from nodemesh.sources.base import Source
from nodemesh.sources.files import FileSource
from nodemesh.wiring.admin import DEFAULT_ADMIN_HOST, DEFAULT_ADMIN_PORT, AdminServer
from nodemesh.wiring.nacks import NackNotifier, XdsNacks
from nodemesh.wiring.routes_view import routes_json
from nodemesh.wiring.sync_signal import SyncSignal
from nodemesh.xds.cache import LISTENER, Snapshot, SnapshotCache
from nodemesh.xds.server import (
    AdsServer,
    ClientStatus,
    ConfigStatus,
    ResourceStatus,
    ServerSettings,
    StreamSettings,
    TlsSettings,
    TypeStatus,
)
from nodemesh.xds.server.identity import NodeIdentityRule
from nodemesh.xds.translate import TranslateOptions, Translation, Translator, validate_envoy_config
from nodemesh.xds.vocab import ALIASES, DEFAULT_PUSH_DELAY, DEFAULT_XDS_ADDRESS, short_name

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

    from nodemesh.k8s_watch.source import KubernetesSource

log = structlog.get_logger("nodemesh.wiring.controlplane")

TRANSLATE_ERRORS = Gauge(
    "nodemesh_translate_object_errors",
    "Objects (or fields of them) the Envoy translation rejected, by kind",
    ["kind"],
)


class ModelFollower(Protocol):
    """Another output that follows the same model versions as xDS (the node
    agent's datapath). It handles its own errors: xDS never waits on a
    failure of it, only on its ordering steps."""

    async def before_publish(self, model: MeshModel) -> None:
        """Runs before `model` goes to the xDS streams."""
        ...

    async def after_publish(self, model: MeshModel) -> None:
        """Runs after `model` went to the xDS streams."""
        ...

    def status(self) -> Mapping[str, Any]: ...

    def not_ready_reasons(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    """Where the API server is and how this process reports back.

    Credentials: `server` (tests, proxies), else the in-cluster service
    account, else a kubeconfig. `node_name` makes an agent watch only its own
    node's pods; `reporter` names this process in the NACK lines it writes
    into conditions (several agents each own their node's lines).
    """

    server: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    node_name: str | None = None
    report_status: bool = True
    # Conditions follow NACKs through the xDS callbacks at once; this retry
    # only sends writes the rate limit or an API outage deferred.
    status_retry: float = 5.0
    reporter: str = "control-plane"


@dataclass(frozen=True, slots=True)
class ControlPlaneConfig:
    """Everything `nodemesh serve` can be told. Defaults suit one node."""

    source_dirs: Sequence[Path] = ()
    kubernetes: KubernetesConfig | None = None
    xds_tcp: str | None = DEFAULT_XDS_ADDRESS
    xds_socket: Path | None = None
    tls: TlsSettings | None = None
    # With client certificates: which SANs name which node ids (None: unchecked).
    node_identity: NodeIdentityRule | None = None
    admin_host: str = DEFAULT_ADMIN_HOST
    admin_port: int = DEFAULT_ADMIN_PORT
    push_delay: float = DEFAULT_PUSH_DELAY
    translate: TranslateOptions = field(default_factory=TranslateOptions)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _problem(item: ObjectError | ObjectWarning) -> dict[str, Any]:
    return {
        "object": str(item.ref),
        "field": item.field,
        "reason": item.reason,
        "kept_previous": getattr(item, "kept_previous", False),
    }


class ControlPlane:
    """Runs until cancelled. `ready` is set once the first model is served."""

    def __init__(self, config: ControlPlaneConfig, follower: ModelFollower | None = None) -> None:
        self.config = config
        self.follower = follower
        self.store = MeshStore(validators=[validate_envoy_config])
        self.cache = SnapshotCache()
        self.translator = Translator(config.translate)
        self.sync_signal = SyncSignal()
        self.server = AdsServer(
            self.cache,
            ServerSettings(
                tcp_address=config.xds_tcp,
                uds_path=config.xds_socket,
                tls=config.tls,
                stream=StreamSettings(
                    coalesce_delay=config.push_delay, node_identity=config.node_identity
                ),
            ),
            callbacks=[self.sync_signal],
        )
        self.admin = AdminServer(
            self, prometheus_client.REGISTRY, config.admin_host, config.admin_port
        )
        self.admin_port: int | None = None
        self.model: MeshModel | None = None
        self.translation: Translation | None = None
        self.ready = asyncio.Event()
        self.kubernetes: KubernetesSource | None = None
        self.sources: list[Source] = [
            FileSource(directory, self.store, source_name=f"files:{directory}")
            for directory in config.source_dirs
        ]
        if config.kubernetes is not None:
            self.kubernetes = _kubernetes_source(self, config.kubernetes)
            self.sources.append(self.kubernetes)
            # A NACK reaches the objects' Programmed condition at once.
            self.server.subscribe(NackNotifier(self.kubernetes.nacks_changed))

    async def run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for source in self.sources:
                await source.open()
                stack.push_async_callback(source.close)
            await self.server.start()
            stack.push_async_callback(self.server.stop)
            self.admin_port = await self.admin.start()
            stack.push_async_callback(self.admin.stop)
            async with asyncio.TaskGroup() as group:
                for source in self.sources:
                    group.create_task(source.run(), name=f"source {source.name}")
                group.create_task(self._publish_models(), name="model-to-xds")

    async def _publish_models(self) -> None:
        for source in self.sources:
            await source.wait_synced()
        async for model in self.store.updates():
            if self.follower is None:
                await self.publish_async(model)
                continue
            # Envoy keeps every listener, route and cluster the new version
            # drops until the follower's kernel no longer steers to them
            # (docs/datapath.md, "Held-back redirects").
            self.cache.hold_removals()
            try:
                await self.follower.before_publish(model)
                await self.publish_async(model)
                await self.follower.after_publish(model)
            finally:
                self.cache.release_removals()

    def publish(self, model: MeshModel) -> None:
        """Translate one model version and hand it to every stream."""
        started = time.perf_counter()
        translation, snapshot = self._translate(model)
        self._install(model, translation, snapshot, started)

    async def publish_async(self, model: MeshModel) -> None:
        """`publish`, translating and encoding in a worker thread: a large
        model must not stall the loop serving streams and health checks."""
        started = time.perf_counter()
        translation, snapshot = await asyncio.to_thread(self._translate, model)
        self._install(model, translation, snapshot, started)

    def _translate(self, model: MeshModel) -> tuple[Translation, Snapshot]:
        # Only ever one at a time (the publish loop awaits each), and only
        # the translator and the cache's encoding memo are touched here.
        translation = self.translator.translate(model)
        snapshot = self.cache.build_snapshot(
            translation.resources, label=model.version, named_only=translation.named_only
        )
        return translation, snapshot

    def _install(
        self, model: MeshModel, translation: Translation, snapshot: Snapshot, started: float
    ) -> None:
        self.cache.set_default_snapshot(snapshot)
        previous = set(self.translation.errors) if self.translation is not None else set()
        self.model, self.translation = model, translation
        by_kind: dict[str, int] = {}
        for error in translation.errors:
            by_kind[error.ref.kind.value] = by_kind.get(error.ref.kind.value, 0) + 1
            if error not in previous:  # once per rejection, not once per model version
                log.error(
                    "object_rejected", object=str(error.ref), field=error.field, reason=error.reason
                )
        # Every kind, so a kind whose errors cleared goes back to 0.
        for kind in Kind:
            TRANSLATE_ERRORS.labels(kind=kind.value).set(by_kind.get(kind.value, 0))
        self.sync_signal.notify()  # a client may be in sync with it already
        log.info(
            "model_published",
            version=model.version,
            generation=model.generation,
            errors=len(model.errors) + len(translation.errors),
            seconds=round(time.perf_counter() - started, 6),
        )
        self.ready.set()

    def synced(self, node_id: str) -> bool:
        """Whether `node_id` is connected and has ACKed every type of the model
        version published now."""
        model = self.model
        return model is not None and any(
            client.node_id == node_id
            and client.snapshot_label == model.version
            and client.types
            and all(_type_synced(t) for t in client.types.values())
            for client in self.server.clients()
        )

    def envoy_listeners(self, node_id: str) -> frozenset[str] | None:
        """Listeners Envoy `node_id` holds (ACKed some version of); None when
        it is not connected."""
        return self.server.acked_names(node_id, LISTENER)

    def rejection(self, node_id: str) -> str | None:
        """The NACK of `node_id` when it has answered everything the server
        holds for it now and rejected some of it (nothing newer is owed: a
        later version could still be ACKed); else None."""
        model = self.model
        if model is None:
            return None
        for client in self.server.clients():
            if client.node_id != node_id or client.snapshot_label != model.version:
                continue
            types = client.types.values()
            if not types or any(t.pending for t in types):
                continue
            if not all(_answered(r) for t in types for r in t.resources):
                continue
            for t in types:
                if any(r.status is ConfigStatus.ERROR for r in t.resources):
                    return f"{t.short_name}: {t.last_nack_error or 'rejected (no message)'}"
        return None

    async def wait_synced(self, node_id: str, timeout: float = 30.0) -> None:
        """Until `synced(node_id)`; EnvoyRejected as soon as it NACKed the
        published version (waiting longer cannot bring an ACK); TimeoutError
        after `timeout` seconds. Woken by the xDS server's callbacks and by
        publish(), never polled."""
        async with asyncio.timeout(timeout):
            while True:
                changed = self.sync_signal.changed()
                if self.synced(node_id):
                    return
                rejected = self.rejection(node_id)
                if rejected is not None:
                    raise EnvoyRejected(rejected)
                await changed.wait()

    # -- AdminView ---------------------------------------------------------------

    def not_ready_reasons(self) -> Sequence[str]:
        if self.model is None:
            return ["no mesh model has been published yet"]
        reasons = [reason for source in self.sources for reason in source.not_ready_reasons()]
        if self.follower is not None:
            reasons += self.follower.not_ready_reasons()
        return reasons

    def syncz(self) -> Mapping[str, Any]:
        model, translation = self.model, self.translation
        errors = (*model.errors, *translation.errors) if model and translation else ()
        warnings = (*model.warnings, *translation.warnings) if model and translation else ()
        return {
            "model": {
                "version": model.version if model else None,
                "generation": model.generation if model else None,
                "errors": [_problem(e) for e in errors],
                "warnings": _unique([_problem(w) for w in warnings]),
            },
            "sources": [{"name": s.name, "errors": s.problems()} for s in self.sources],
            "clients": [_client_json(c) for c in self.server.clients()],
            "routes": routes_json(model, XdsNacks(self.server.clients).nacks()) if model else [],
            **({"datapath": self.follower.status()} if self.follower is not None else {}),
        }

    def config_dump(self, node: str, resource_type: str | None) -> Mapping[str, Any] | None:
        if self.cache.snapshot(node) is None:
            return None
        wanted = ALIASES.get(resource_type or "", resource_type)
        dump = self.server.config_dump(node)  # what the node is served
        return {
            short_name(type_url): {
                name: json_format.MessageToDict(message, preserving_proto_field_name=True)
                for name, message in sorted(resources.items())
            }
            for type_url, resources in sorted(dump.items())
            if wanted is None or short_name(type_url) == wanted
        }


def _kubernetes_source(plane: ControlPlane, config: KubernetesConfig) -> KubernetesSource:
    """The API server as a source of the model, reporting status back. Imported
    here, not at module level: the Kubernetes client costs ~45 MiB of imports
    that file-only runs (the demo) do not need."""
    from nodemesh.k8s_watch.client import KubeApi, make_api_client
    from nodemesh.k8s_watch.resources import default_resources
    from nodemesh.k8s_watch.settings import WatchSettings
    from nodemesh.k8s_watch.source import KubernetesSource

    def connect() -> Awaitable[ApiClient]:
        return make_api_client(config.server, kubeconfig=config.kubeconfig, context=config.context)

    settings = WatchSettings()
    return KubernetesSource(
        KubeApi(None, settings, connect=connect),
        plane.store,
        node=config.reporter,
        settings=settings,
        resources=default_resources(config.node_name),
        report_status=config.report_status,
        retry_interval=config.status_retry,
        nacks=XdsNacks(plane.server.clients),
        translation_errors=lambda: plane.translation.errors if plane.translation else (),
    )


def _type_synced(status: TypeStatus) -> bool:
    """The client ACKed every resource of the type the server has now.
    Names it still holds beyond those (held removals) do not count."""
    return not status.pending and all(
        r.status is ConfigStatus.SYNCED for r in status.resources if r.resource is not None
    )


def _answered(status: ResourceStatus) -> bool:
    """The client has answered the server's current version of a resource:
    ACKed it, or NACKed that very version."""
    if status.resource is None:
        return True  # nothing to send (held removals, absent names)
    if status.status is ConfigStatus.ERROR:
        return status.sent_version == status.resource.version
    return status.status is ConfigStatus.SYNCED


def _unique(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per object and field: the model and the translator may both
    flag the same field (e.g. a deprecated one); the later, more specific
    message wins."""
    by_key = {(p["object"], p["field"]): p for p in problems}
    return list(by_key.values())


def _client_json(client: ClientStatus) -> dict[str, Any]:
    return {
        "node": client.node_id,
        "cluster": client.cluster,
        "api": client.api,
        "peer": client.peer,
        "connected_at": _iso(client.connected_at),
        "model_version": client.snapshot_label,
        "types": {
            status.short_name: {
                "state": status.status.value,
                "version": status.last_acked_version or status.last_sent_version,
                "acked_version": status.last_acked_version,
                "last_ack": _iso(status.last_ack_time),
                "error": status.last_nack_error,
                "resources": len(status.resources),
            }
            for status in client.types.values()
        },
    }
