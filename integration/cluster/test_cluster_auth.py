"""Credentials as a pod has them, against the real API server (the port of
integration/test_k8s_auth.py): the ServiceAccount token and CA that
Kubernetes mounts under /var/run/secrets/kubernetes.io/serviceaccount (here:
a TokenRequest token for deploy/'s account and the cluster's CA, in a
directory of the test's), a server certificate from a CA the pod does not
trust, and an explicit server URL with a token. Who the server took each
request to be is read from its audit log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from integration.cluster.cluster_support import AGENT_SA, AGENT_USER, kget
from integration.cluster.kube_cluster import KubeCluster
from integration.cluster.pki import Pki
from integration.k8s_support import FAST, Recorder
from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.informer_set import InformerSet
from nodemesh.k8s_watch.resources import SERVICES
from tests.support.polling import wait_until_async

pytestmark = pytest.mark.k8s


@asynccontextmanager
async def watching(client: Any, sink: Recorder) -> AsyncIterator[InformerSet]:
    source = InformerSet(KubeApi(client, FAST), sink, settings=FAST, resources=(SERVICES,))
    task = asyncio.create_task(source.run(), name="watch-source")
    try:
        yield source
    finally:
        task.cancel()
        await asyncio.wait([task])
        await client.close()


def token(kube: KubeCluster) -> str:
    """What the kubelet projects into the pod: a TokenRequest token."""
    namespace, name = AGENT_SA
    return kube.kubectl("create", "token", name, "-n", namespace).stdout.strip()


def service_account_dir(
    where: Path, kube: KubeCluster, ca: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The mounted files and the environment the kubelet gives a pod."""
    account = where / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(token(kube))
    (account / "ca.crt").write_bytes(ca.read_bytes())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube.apiserver_port))
    return str(account)


def services(kube: KubeCluster) -> set[str]:
    items = kget(kube, "services", "-A")["items"]
    return {f"{s['metadata']['namespace']}/{s['metadata']['name']}" for s in items}


def users(kube: KubeCluster, since: int) -> set[str]:
    """Every user of nodemesh-system's accounts the audit log saw since `since`."""
    return {e["user"]["username"] for e in kube.audit_events(since=since)}


async def test_in_cluster_service_account_over_tls(
    deployed: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = service_account_dir(tmp_path, deployed, deployed.pki.ca.cert, monkeypatch)
    mark = deployed.audit_mark()
    sink = Recorder()
    async with watching(await make_api_client(service_account_dir=account), sink) as source:
        await source.wait_synced(60)
    assert sink.names("Service") == services(deployed)
    assert users(deployed, mark) == {AGENT_USER}, "the mounted token is who the server saw"


async def test_untrusted_server_certificate_is_refused_and_said(
    deployed: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_ca = Pki(tmp_path / "other").ca.cert
    account = service_account_dir(tmp_path, deployed, other_ca, monkeypatch)
    mark = deployed.audit_mark()
    sink = Recorder()
    async with watching(await make_api_client(service_account_dir=account), sink) as source:
        await wait_until_async(
            lambda: "certificate" in " ".join(source.health.reasons()).lower(), timeout=60
        )
        assert not source.health.synced and sink.objects == {}
    # The handshake failed before any request: the server never saw the token.
    assert users(deployed, mark) == set()


async def test_explicit_host_and_token(
    deployed: KubeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--k8s-server URL` with a token: the server's CA comes from the
    system's trust store, here pointed at the cluster's CA as an operator
    would with SSL_CERT_FILE."""
    monkeypatch.setenv("SSL_CERT_FILE", str(deployed.pki.ca.cert))
    mark = deployed.audit_mark()
    sink = Recorder()
    client = await make_api_client(deployed.server, token=token(deployed))
    async with watching(client, sink) as source:
        await source.wait_synced(60)
    assert sink.names("Service") == services(deployed)
    assert users(deployed, mark) == {AGENT_USER}
