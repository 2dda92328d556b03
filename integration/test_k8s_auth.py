"""Credentials as a pod has them: the service account token and CA that
Kubernetes mounts, against an HTTPS API server double; and an explicit token."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from integration.apiserver_double import ApiServerDouble
from integration.k8s_support import FAST, Recorder, seed
from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.informer_set import InformerSet
from nodemesh.k8s_watch.resources import SERVICES
from tests.support.polling import wait_until_async


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signer, hashes.SHA256())


def _pki(where: Path, prefix: str) -> tuple[Path, ssl.SSLContext]:
    """A CA (its cert written to `prefix`ca.crt) and a server context it signed."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{prefix}ca")])
    ca = _cert(f"{prefix}ca", ca_key, ca_name, ca_key, ca=True)
    server = _cert("kube-apiserver", key, ca_name, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    ca_path = where / f"{prefix}ca.crt"
    ca_path.write_bytes(ca.public_bytes(pem))
    (where / f"{prefix}server.crt").write_bytes(server.public_bytes(pem))
    (where / f"{prefix}server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(where / f"{prefix}server.crt", where / f"{prefix}server.key")
    return ca_path, context


@pytest.fixture
async def https_double(tmp_path: Path) -> AsyncIterator[tuple[ApiServerDouble, Path]]:
    ca_path, context = _pki(tmp_path, "")
    server = ApiServerDouble(bookmark_interval=0.5, ssl_context=context)
    seed(server, services=4)
    await server.start()
    yield server, ca_path
    await server.stop()


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


def _service_account(where: Path, ca: Path, monkeypatch: pytest.MonkeyPatch, port: int) -> str:
    account = where / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("sa-token")
    (account / "ca.crt").write_bytes(ca.read_bytes())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(port))
    return str(account)


async def test_in_cluster_service_account_over_tls(
    https_double: tuple[ApiServerDouble, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    double, ca_path = https_double
    account = _service_account(tmp_path, ca_path, monkeypatch, double.port)
    sink = Recorder()
    async with watching(await make_api_client(service_account_dir=account), sink) as source:
        await source.wait_synced(30)
    assert len(sink.names("Service")) == 4
    assert double.authorizations == {"Bearer sa-token"}


async def test_untrusted_server_certificate_is_refused_and_said(
    https_double: tuple[ApiServerDouble, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    double, _ = https_double
    other_ca, _ = _pki(tmp_path, "other-")
    account = _service_account(tmp_path, other_ca, monkeypatch, double.port)
    sink = Recorder()
    async with watching(await make_api_client(service_account_dir=account), sink) as source:
        await wait_until_async(lambda: "certificate" in " ".join(source.health.reasons()).lower())
        assert not source.health.synced and sink.objects == {}
    assert double.authorizations == set(), "no token sent to an unverified server"


async def test_explicit_host_and_token(tmp_path: Path) -> None:
    double = ApiServerDouble()
    seed(double, services=2)
    await double.start()
    try:
        sink = Recorder()
        async with watching(await make_api_client(double.url, token="t0ken"), sink) as source:
            await source.wait_synced(30)
        assert double.authorizations == {"Bearer t0ken"}
    finally:
        await double.stop()
