"""Unix socket, TLS, mTLS and graceful shutdown, with real gRPC channels."""

from __future__ import annotations

import asyncio
import datetime
import signal
import stat
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nodemesh.xds.cache import CLUSTER, SnapshotCache
from nodemesh.xds.server import AdsServer, ServerConfigError, ServerSettings, TlsSettings
from tests.xds.server.ads_harness import TIMEOUT, SotwClient, mesh, names_of, wait_until


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = _key()
    ca = _cert("test-ca", ca_key, None, ca=True)
    files = {"ca": _pem(ca)}
    for who in ("server", "client"):
        key = _key()
        files[f"{who}.key"] = _pem(key)
        files[f"{who}.crt"] = _pem(
            _cert(who if who == "client" else "localhost", key, (ca, ca_key))
        )
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


async def _serve(settings: ServerSettings) -> AdsServer:
    cache = SnapshotCache()
    cache.set_default_snapshot(cache.build_snapshot(mesh(), "v"))
    server = AdsServer(cache, settings)
    await server.start()
    return server


async def _fetch_clusters(channel: grpc.aio.Channel) -> list[str]:
    client = await SotwClient(channel, "node-1").open()
    await client.request(CLUSTER)
    try:
        return names_of(await client.recv())
    finally:
        await client.close()


async def _refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    client = await SotwClient(channel, "node-1").open()
    try:
        await client.request(CLUSTER)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    error = await client.closed()
    assert error is not None
    return error.code()


async def test_unix_socket_with_mode_0660(tmp_path: Path) -> None:
    sock = tmp_path / "xds.sock"
    server = await _serve(ServerSettings(tcp_address=None, uds_path=sock))
    try:
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
            assert await _fetch_clusters(channel) == ["a", "b"]
    finally:
        await server.stop(1.0)
    assert not sock.exists()


async def test_tls_and_mtls(pki: dict[str, Path]) -> None:
    tls = TlsSettings(pki["server.crt"], pki["server.key"], pki["ca"], require_client_cert=True)
    server = await _serve(ServerSettings(tcp_address="127.0.0.1:0", tls=tls))
    target = f"localhost:{server.tcp_port}"
    ca = pki["ca"].read_bytes()
    try:
        with_cert = grpc.ssl_channel_credentials(
            ca, pki["client.key"].read_bytes(), pki["client.crt"].read_bytes()
        )
        async with grpc.aio.secure_channel(target, with_cert) as channel:
            assert await _fetch_clusters(channel) == ["a", "b"]
        # mTLS: no client certificate, no stream
        async with grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca)) as channel:
            assert await _refused(channel) == grpc.StatusCode.UNAVAILABLE
        # and plaintext is refused on a TLS port
        async with grpc.aio.insecure_channel(target) as channel:
            assert await _refused(channel) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(1.0)


async def test_tls_misconfiguration_is_a_clear_error(pki: dict[str, Path], tmp_path: Path) -> None:
    missing = TlsSettings(tmp_path / "nope.crt", pki["server.key"])
    with pytest.raises(ServerConfigError, match=r"nope\.crt"):
        await _serve(ServerSettings(tcp_address="127.0.0.1:0", tls=missing))
    no_ca = TlsSettings(pki["server.crt"], pki["server.key"], require_client_cert=True)
    with pytest.raises(ServerConfigError, match="client_ca"):
        await _serve(ServerSettings(tcp_address="127.0.0.1:0", tls=no_ca))


async def test_graceful_shutdown_ends_streams_cleanly() -> None:
    server = await _serve(ServerSettings(tcp_address="127.0.0.1:0"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.tcp_port}") as channel:
        client = await SotwClient(channel, "node-1").open()
        await client.request(CLUSTER)
        await client.recv()
        await server.stop(grace=5.0)
        assert await client.closed() is None  # status OK: drained, not killed
        assert server.clients() == []


_FROZEN_CLIENT = """
import asyncio, sys, grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

async def main():
    async with grpc.aio.insecure_channel(sys.argv[1]) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id="frozen"), type_url=sys.argv[2]))
        await call.read()
        print("synced", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_keepalive_frees_streams_of_a_frozen_peer() -> None:
    """A peer that stops answering (SIGSTOP: its kernel still ACKs TCP) is
    found out by HTTP/2 keepalive pings and its stream is dropped."""
    server = await _serve(
        ServerSettings(
            tcp_address="127.0.0.1:0", keepalive_seconds=1.0, keepalive_timeout_seconds=1.0
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FROZEN_CLIENT,
        f"127.0.0.1:{server.tcp_port}",
        CLUSTER,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        assert line.strip() == b"synced"
        assert [c.node_id for c in server.clients()] == ["frozen"]
        proc.send_signal(signal.SIGSTOP)
        await wait_until(lambda: server.clients() == [], timeout=60, what="frozen stream dropped")
    finally:
        proc.kill()
        await proc.wait()
        await server.stop(1.0)
