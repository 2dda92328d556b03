"""Shared helpers for the Kubernetes integration tests (not a test module)."""

from __future__ import annotations

import asyncio
import copy
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integration.apiserver_double import ApiServerDouble
from integration.apiserver_double.synthetic import endpoint_slice, service
from integration.local_mesh import free_port, private_loopback
from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.conditions import NackReport
from nodemesh.k8s_watch.informer_set import InformerSet
from nodemesh.k8s_watch.settings import WatchSettings
from nodemesh.model.store import MeshStore
from nodemesh.node.envoy_process import EnvoyProcess, render_bootstrap
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig, KubernetesConfig
from nodemesh.xds.translate import TranslateOptions
from nodemesh.xds.translate.envoy_config import validate_envoy_config

Raw = dict[str, Any]

# Short timeouts so faults heal within a test; the protocol is the same.
FAST = WatchSettings(
    backoff_initial=0.05,
    backoff_max=1.0,
    watch_timeout_seconds=20,
    read_timeout_grace=5.0,
    connect_timeout=2.0,
    list_page_size=3,  # forces limit/continue paging even on tiny test clusters
)


@dataclass
class Recorder:
    """A trivial ObjectSink keeping the latest raw object per (source, kind, ns, name)
    and a log of calls, so tests can check nothing was applied twice."""

    objects: dict[tuple[str, str, str, str], Raw] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    @staticmethod
    def _key(source: str, raw: Mapping[str, Any]) -> tuple[str, str, str, str]:
        meta = raw["metadata"]
        return (source, raw["kind"], meta.get("namespace", ""), meta["name"])

    def apply(self, source: str, raw: Mapping[str, Any]) -> None:
        key = self._key(source, raw)
        self.objects[key] = copy.deepcopy(dict(raw))
        self.calls.append(("apply", key[1], f"{key[2]}/{key[3]}"))

    def delete(self, source: str, kind: str, namespace: str, name: str) -> None:
        self.objects.pop((source, kind, namespace, name), None)
        self.calls.append(("delete", kind, f"{namespace}/{name}"))

    def replace_all(self, source: str, raws: Iterable[Mapping[str, Any]]) -> None:
        self.objects = {k: v for k, v in self.objects.items() if k[0] != source}
        for raw in raws:
            self.objects[self._key(source, raw)] = copy.deepcopy(dict(raw))
        self.calls.append(("replace_all", source, ""))

    def names(self, kind: str) -> set[str]:
        return {f"{k[2]}/{k[3]}" for k in self.objects if k[1] == kind}

    def get(self, kind: str, namespace: str, name: str) -> Raw | None:
        for key, raw in self.objects.items():
            if key[1:] == (kind, namespace, name):
                return raw
        return None


def seed(double: ApiServerDouble, services: int = 5) -> None:
    from integration.apiserver_double import find_type

    svc_t, eps_t = (
        find_type("", "v1", "services"),
        find_type("discovery.k8s.io", "v1", "endpointslices"),
    )
    assert svc_t and eps_t
    for i in range(services):
        double.store.create(svc_t, service("default", f"svc{i}", f"10.96.0.{i + 1}"))
        double.store.create(eps_t, endpoint_slice("default", f"svc{i}", [f"10.244.0.{i + 1}"]))


@asynccontextmanager
async def running_source(
    double: ApiServerDouble,
    sink: Any,
    settings: WatchSettings = FAST,
    **kw: Any,
) -> AsyncIterator[InformerSet]:
    api_client = await make_api_client(double.url)
    source = InformerSet(KubeApi(api_client, settings), sink, settings=settings, **kw)
    task = asyncio.create_task(source.run(), name="watch-source")
    try:
        await source.wait_synced(30)
        yield source
    finally:
        task.cancel()
        await asyncio.wait([task])
        await api_client.close()
        if not task.cancelled() and task.exception() is not None:
            raise AssertionError("the watch source failed") from task.exception()


@dataclass
class Nacks:
    """A NackSource the test fills: the seam where XdsNacks reports what the
    real Envoys rejected (for NACKs nodemesh's valid output cannot provoke)."""

    reports: list[NackReport] = field(default_factory=list)

    def nacks(self) -> Iterable[NackReport]:
        return list(self.reports)


class CountingStore(MeshStore):
    """The real store, counting what the watcher applies to it."""

    def __init__(self) -> None:
        super().__init__(validators=[validate_envoy_config])
        self.applied: list[tuple[str, str]] = []

    def apply(self, source: str, raw: Mapping[str, Any]) -> None:
        self.applied.append((raw["kind"], raw["metadata"]["name"]))
        super().apply(source, raw)


HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."


def busy_cec(port: int) -> dict[str, Any]:
    """A listener on a port another process holds: only Envoy can find out."""
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    hcm = {
        "@type": HCM + "HttpConnectionManager",
        "stat_prefix": "busy",
        "route_config": {"name": "busy-route", "virtual_hosts": []},
        "http_filters": [router],
    }
    listener = {
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "busy-listener",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
    }
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEnvoyConfig",
        "metadata": {"name": "busy", "namespace": "default"},
        "spec": {"resources": [listener]},
    }


@asynccontextmanager
async def serving_with_envoy(
    kubernetes: KubernetesConfig, workdir: Path, node: str = "node-a"
) -> AsyncIterator[ControlPlane]:
    """`nodemesh serve --kubernetes`'s wiring in process, synced with a real
    node Envoy for `node`; the control plane must end without an error."""
    xds_port = free_port()
    plane = ControlPlane(
        ControlPlaneConfig(
            kubernetes=kubernetes,
            xds_tcp=f"127.0.0.1:{xds_port}",
            admin_port=0,
            translate=TranslateOptions(listener_address=private_loopback()),
        )
    )
    envoy = EnvoyProcess(workdir, render_bootstrap(xds_tcp=("127.0.0.1", xds_port)), node)
    task = asyncio.create_task(plane.run(), name="control-plane")
    try:
        await asyncio.wait_for(plane.ready.wait(), 60)
        await envoy.start()
        await plane.wait_synced(node, 60)
        yield plane
    finally:
        await envoy.stop()
        task.cancel()
        await asyncio.wait([task])
    assert task.cancelled() or task.exception() is None, task.exception()


def admin_get(admin: str, path: str) -> tuple[int, Any]:
    """GET a nodemesh admin endpoint: (status, JSON body); (0, None) when
    nothing answers yet."""
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except OSError:
        return 0, None
