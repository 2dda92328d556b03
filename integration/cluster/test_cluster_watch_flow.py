"""The watcher's everyday work against the real kube-apiserver (the ports of
integration/test_k8s_watch.py's cases that need no injected fault), as
deploy/'s account so the audit log shows each request: a paged initial list,
adds, changes and deletes, the node-filtered pod watch, a list refused by
real RBAC until the role is granted, and watches the server ends
(timeoutSeconds) resumed without a relist."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.cluster.cluster_support import AGENT_SA, AGENT_USER, kget, wait_for
from integration.cluster.kube_cluster import KubeCluster
from integration.k8s_support import Recorder
from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.informer_set import InformerSet
from nodemesh.k8s_watch.resources import (
    ENDPOINT_SLICES,
    PODS,
    SERVICES,
    ResourceSpec,
    default_resources,
)
from nodemesh.k8s_watch.settings import WatchSettings
from nodemesh.model.objects import Kind
from tests.support.polling import wait_until_async

pytestmark = pytest.mark.k8s

NS = "watch-flow"
# Pages of 3: every list here takes several continue round trips.
SETTINGS = WatchSettings(
    backoff_initial=0.05,
    backoff_max=1.0,
    watch_timeout_seconds=20,
    read_timeout_grace=5.0,
    connect_timeout=2.0,
    list_page_size=3,
)


@pytest.fixture(scope="module")
def flow(deployed: KubeCluster) -> Iterator[Path]:
    """Seven Services in a namespace of their own; the agent's kubeconfig."""
    deployed.kubectl("create", "namespace", NS)
    try:
        # Pods are refused until the namespace has its default ServiceAccount.
        # The controllers make it, but after the API server restarts earlier
        # in a full run they were seen to take over a minute: make it here.
        account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}
        # Unchecked: the controller may create it between apply's get and create.
        deployed.kubectl("apply", "-n", NS, "-f", "-", stdin=yaml.safe_dump(account), check=False)
        wait_for(
            lambda: deployed.kubectl("get", "sa", "default", "-n", NS, check=False).returncode == 0,
            f"the default ServiceAccount in {NS}",
        )
        deployed.kubectl("apply", "-f", "-", stdin=_services(range(7)))
        yield deployed.service_account_kubeconfig(*AGENT_SA)
    finally:
        # Gone before the next test, whose audit checks a terminating
        # namespace's 403s would disturb.
        deployed.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=120s")


def _services(names: range | Sequence[int], port: int = 80) -> str:
    return yaml.safe_dump_all(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"svc{i}", "namespace": NS},
            "spec": {"ports": [{"port": port}]},
        }
        for i in names
    )


@asynccontextmanager
async def running(
    kubeconfig: Path,
    sink: Recorder,
    resources: tuple[ResourceSpec, ...],
    settings: WatchSettings = SETTINGS,
    synced: bool = True,
) -> AsyncIterator[InformerSet]:
    client = await make_api_client(kubeconfig=str(kubeconfig))
    source = InformerSet(KubeApi(client, settings), sink, settings=settings, resources=resources)
    task = asyncio.create_task(source.run(), name="watch-source")
    try:
        if synced:
            await source.wait_synced(60)
        yield source
    finally:
        task.cancel()
        await asyncio.wait([task])
        await client.close()
        if not task.cancelled() and task.exception() is not None:
            raise AssertionError("the watch source failed") from task.exception()


def listed(kube: KubeCluster, *args: str) -> set[str]:
    return {
        f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"
        for o in kget(kube, *args)["items"]
    }


def requests(kube: KubeCluster, since: int, resource: str, user: str = AGENT_USER) -> list[Any]:
    return [
        e
        for e in kube.audit_events(user, since)
        if e.get("objectRef", {}).get("resource") == resource
    ]


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "page-by-page"])
async def test_initial_sync_lists_every_page(
    deployed: KubeCluster, flow: Path, prefetch: bool
) -> None:
    mark = deployed.audit_mark()
    sink = Recorder()
    settings = dataclasses.replace(SETTINGS, list_prefetch=prefetch)
    async with running(flow, sink, (SERVICES, ENDPOINT_SLICES), settings) as source:
        assert sink.names("Service") == listed(deployed, "services", "-A")
        assert sink.names("EndpointSlice") == listed(deployed, "endpointslices", "-A")
        # List items lack kind/apiVersion on the wire; the sink always gets them.
        raw = sink.get("Service", NS, "svc3")
        assert raw is not None and (raw["apiVersion"], raw["kind"]) == ("v1", "Service")
        assert source.health.ready and source.health.reasons() == []
    pages = [e for e in requests(deployed, mark, "services") if e["verb"] == "list"]
    assert sum("continue=" in e["requestURI"] for e in pages) >= 2, "paging really happened"


async def test_add_modify_delete_flow(deployed: KubeCluster, flow: Path) -> None:
    sink = Recorder()
    async with running(flow, sink, (SERVICES,)):
        deployed.kubectl("apply", "-f", "-", stdin=_services([100]))
        await wait_until_async(lambda: f"{NS}/svc100" in sink.names("Service"))
        deployed.kubectl("apply", "-f", "-", stdin=_services([100], port=8080))

        def port() -> int:
            return int((sink.get("Service", NS, "svc100") or {})["spec"]["ports"][0]["port"])

        await wait_until_async(lambda: port() == 8080, what="the changed port")
        deployed.kubectl("delete", "service", "svc100", "-n", NS)
        await wait_until_async(lambda: f"{NS}/svc100" not in sink.names("Service"))
        assert sink.names("Service") == listed(deployed, "services", "-A")


POD = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}}}
spec:
  nodeName: {node}
  containers: [{{name: app, image: registry.invalid/app}}]
"""


async def test_pod_field_selector_watches_only_this_node(deployed: KubeCluster, flow: Path) -> None:
    (mine,) = [s for s in default_resources("node-0") if s.kind is Kind.POD]
    for name, node in (("mine", "node-0"), ("theirs", "node-1")):
        deployed.kubectl("apply", "-f", "-", stdin=POD.format(name=name, ns=NS, node=node))
    sink = Recorder()
    on_node_0 = ("pods", "-A", "--field-selector=spec.nodeName=node-0")
    async with running(flow, sink, (mine,)):
        assert f"{NS}/mine" in sink.names("Pod") and f"{NS}/theirs" not in sink.names("Pod")
        for name, node in (("mine-2", "node-0"), ("theirs-2", "node-1")):
            deployed.kubectl("apply", "-f", "-", stdin=POD.format(name=name, ns=NS, node=node))
        await wait_until_async(lambda: f"{NS}/mine-2" in sink.names("Pod"))
        await wait_until_async(lambda: sink.names("Pod") == listed(deployed, *on_node_0))
    assert not {f"{NS}/theirs", f"{NS}/theirs-2"} & sink.names("Pod")


LIMITED = "system:serviceaccount:nodemesh-system:watch-limited"


async def test_forbidden_list_reports_why_then_recovers(deployed: KubeCluster, flow: Path) -> None:
    """An account whose role lacks pods (one resource short, as a hand-edited
    ClusterRole might be): the server's own 403 message in the reasons, and
    once the role is fixed the watcher syncs with no restart."""
    deployed.kubectl("create", "serviceaccount", "watch-limited", "-n", "nodemesh-system")
    deployed.kubectl(
        "create", "clusterrole", "watch-limited", "--verb=list,watch", "--resource=services"
    )
    deployed.kubectl(
        "create",
        "clusterrolebinding",
        "watch-limited",
        "--clusterrole=watch-limited",
        "--serviceaccount=nodemesh-system:watch-limited",
    )
    kubeconfig = deployed.service_account_kubeconfig("nodemesh-system", "watch-limited")
    sink = Recorder()
    try:
        async with running(kubeconfig, sink, (SERVICES, PODS), synced=False) as source:
            await wait_until_async(
                lambda: any("HTTP 403" in r for r in source.health.reasons()), timeout=60
            )
            (reason,) = [r for r in source.health.reasons() if r.startswith("pods")]
            assert reason.startswith("pods.core/v1: never synced"), reason
            assert 'pods is forbidden: User "' + LIMITED in reason, reason
            deployed.kubectl(
                "create",
                "clusterrole",
                "watch-limited-pods",
                "--verb=list,watch",
                "--resource=pods",
            )
            deployed.kubectl(
                "create",
                "clusterrolebinding",
                "watch-limited-pods",
                "--clusterrole=watch-limited-pods",
                "--serviceaccount=nodemesh-system:watch-limited",
            )
            await source.wait_synced(60)
            assert source.health.ready
    finally:
        for kind, name in (
            ("clusterrolebinding", "watch-limited"),
            ("clusterrolebinding", "watch-limited-pods"),
            ("clusterrole", "watch-limited"),
            ("clusterrole", "watch-limited-pods"),
        ):
            deployed.kubectl("delete", kind, name, "--ignore-not-found")
        deployed.kubectl("delete", "serviceaccount", "watch-limited", "-n", "nodemesh-system")


async def test_server_ended_watches_resume_without_relist(
    deployed: KubeCluster, flow: Path
) -> None:
    mark = deployed.audit_mark()
    sink = Recorder()
    settings = dataclasses.replace(SETTINGS, watch_timeout_seconds=1)
    async with running(flow, sink, (SERVICES,), settings):

        def watches() -> int:
            ended = [e for e in requests(deployed, mark, "services") if e["verb"] == "watch"]
            return sum(1 for e in ended if e["stage"] == "ResponseComplete")

        await asyncio.to_thread(
            wait_for, lambda: watches() >= 3, "the server to end watches (timeoutSeconds)"
        )
        deployed.kubectl("apply", "-f", "-", stdin=_services([200]))
        await wait_until_async(lambda: f"{NS}/svc200" in sink.names("Service"))
    assert sum(1 for c in sink.calls if c[0] == "replace_all") == 1, "no relist"
    lists = [e for e in requests(deployed, mark, "services") if e["verb"] == "list"]
    assert all("continue=" in e["requestURI"] for e in lists[1:]), "one list, paged"
    deployed.kubectl("delete", "service", "svc200", "-n", NS)
