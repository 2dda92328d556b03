"""The watcher's protocol handling against a real kube-apiserver and etcd:
bookmarks as kube-apiserver sends them, and a 410 Gone forced by an etcd
compaction (across an API server restart), after which the watcher relists
and loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from integration.cluster.cluster_support import wait_for
from integration.cluster.kube_cluster import KubeCluster
from nodemesh.k8s_watch.client import KubeApi, ListPage, make_api_client
from nodemesh.k8s_watch.errors import ResourceGone
from nodemesh.k8s_watch.health import WatchHealth
from nodemesh.k8s_watch.resources import SERVICES, ResourceSpec, default_resources
from nodemesh.k8s_watch.settings import WatchSettings
from nodemesh.k8s_watch.watching import Bookmark, Changed, Listed, informer_stream, watch_once
from nodemesh.model.objects import Kind

pytestmark = pytest.mark.k8s

# Short watches, so kube-apiserver's bookmark before the timeout comes soon;
# tiny pages, so a list takes several continue round trips.
SETTINGS = WatchSettings(
    backoff_initial=0.05,
    backoff_max=1.0,
    watch_timeout_seconds=5,
    read_timeout_grace=5.0,
    list_page_size=2,
)


@pytest.fixture
async def api(cluster: KubeCluster) -> AsyncIterator[KubeApi]:
    client = await make_api_client(kubeconfig=str(cluster.admin_kubeconfig))
    try:
        yield KubeApi(client, SETTINGS)
    finally:
        await client.close()


def services(cluster: KubeCluster, namespace: str, names: range) -> None:
    docs = "\n---\n".join(
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: {namespace}}}\n"
        f"spec: {{ports: [{{port: 80}}]}}"
        for i in names
    )
    cluster.kubectl("apply", "-f", "-", stdin=docs)


def relists(cause: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "nodemesh_k8s_relists_total", {"resource": str(SERVICES), "cause": cause}
        )
        or 0.0
    )


OTHER_NODES_POD = """
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: default}
spec:
  nodeName: node-1
  containers: [{name: app, image: registry.invalid/app}]
"""


async def test_bookmarks_arrive_on_the_agents_node_filtered_pod_watch(
    cluster: KubeCluster, api: KubeApi
) -> None:
    """kube-apiserver sends a bookmark when its watch cache moved past what a
    watcher was told: on the agent's pod watch (fieldSelector
    spec.nodeName=node-0), a pod on node-1 changes and only a BOOKMARK with
    the newer resourceVersion comes, before the watch times out."""
    (pods,) = [s for s in default_resources("node-0") if s.kind is Kind.POD]
    assert pods.field_selector == "spec.nodeName=node-0"
    page = await api.list_page(pods)
    seen: list[Any] = []

    async def elsewhere() -> None:
        await asyncio.sleep(1)
        await asyncio.to_thread(cluster.kubectl, "apply", "-f", "-", stdin=OTHER_NODES_POD)

    writer = asyncio.create_task(elsewhere())
    try:
        async with asyncio.timeout(30):
            async for item in watch_once(api, pods, page.resource_version):
                seen.append(item)
                if isinstance(item, Bookmark):
                    break
    finally:
        await writer
        cluster.kubectl("delete", "pod", "elsewhere", "--wait=false")
    bookmark = seen[-1]
    assert isinstance(bookmark, Bookmark), seen
    assert int(bookmark.resource_version) > int(page.resource_version)
    assert not [i for i in seen if isinstance(i, Changed)], "node-1's pod is not ours"


class CompactAfterFirstPage:
    """The real KubeApi, with one hook: after the first page of the first
    list, two more Services are written, etcd is compacted and kube-apiserver
    restarts (a rolling upgrade mid-list). While it runs, kube-apiserver
    serves a continuation from its watch cache's snapshot; after the restart
    the continue token goes to etcd, which no longer has that revision, and
    the answer is 410 Gone. Everything the watcher sees comes from the server."""

    def __init__(self, api: KubeApi, cluster: KubeCluster) -> None:
        self.api, self.cluster, self.done = api, cluster, False
        self.gone: list[str] = []

    async def list_page(self, spec: ResourceSpec, continue_token: str = "") -> ListPage:
        if continue_token and not self.done:
            self.done = True
            await asyncio.to_thread(services, self.cluster, "compaction", range(6, 8))
            await asyncio.to_thread(self.cluster.compact_etcd)
            await asyncio.to_thread(self.cluster.stop_apiserver)
            await asyncio.to_thread(self.cluster.start_apiserver)
        try:
            return await self.api.list_page(spec, continue_token)
        except ResourceGone as exc:
            self.gone.append(str(exc))
            raise

    def watch(self, spec: ResourceSpec, resource_version: str) -> AsyncGenerator[bytes, None]:
        return self.api.watch(spec, resource_version)


async def test_compaction_forces_410_and_the_relist_loses_nothing(
    cluster: KubeCluster, api: KubeApi
) -> None:
    cluster.kubectl("create", "namespace", "compaction")
    services(cluster, "compaction", range(6))
    hooked = CompactAfterFirstPage(api, cluster)
    names: set[str] = set()
    gone_before = relists("gone")

    async def follow() -> None:
        async for item in informer_stream(hooked, SERVICES, SETTINGS, WatchHealth()):
            if isinstance(item, Listed):
                names.clear()
                names.update(
                    f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in item.items
                )
            elif isinstance(item, Changed):
                key = f"{item.obj['metadata']['namespace']}/{item.obj['metadata']['name']}"
                (names.discard if item.type == "DELETED" else names.add)(key)

    task = asyncio.create_task(follow())
    try:
        want = {f"compaction/svc-{i}" for i in range(8)}
        await asyncio.to_thread(
            wait_for, lambda: want <= names, "all eight Services, after the relist"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    print(f"kube-apiserver said: {hooked.gone}")
    assert hooked.gone, "the continue after the compaction was answered 410 Gone"
    assert relists("gone") == gone_before + 1
