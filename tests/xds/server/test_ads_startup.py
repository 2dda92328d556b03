"""Startup refusals and the Unix socket's ownership (issue 10, items 13, 19,
20, 21), with real sockets, real gRPC and certificates made by
`cryptography`."""

# The `pki` fixture is imported from test_ads_transport; ruff reads each
# test's `pki` parameter as redefining the import.
# ruff: noqa: F401, F811

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from nodemesh.xds.server import ServerConfigError, ServerSettings, TlsSettings
from tests.xds.server.test_ads_transport import (
    _cert,
    _fetch_clusters,
    _key,
    _pem,
    _refused,
    _serve,
    pki,
)

# -- the Unix socket (item 13, item 19) ----------------------------------------


async def test_a_live_socket_is_not_taken_over(tmp_path: Path) -> None:
    sock = tmp_path / "xds.sock"
    first = await _serve(ServerSettings(tcp_address=None, uds_path=sock))
    try:
        with pytest.raises(ServerConfigError, match="a live server answers on it"):
            await _serve(ServerSettings(tcp_address=None, uds_path=sock))
        # The first server still owns the path and answers on it.
        async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
            assert await _fetch_clusters(channel) == ["a", "b"]
    finally:
        await first.stop(1.0)
    assert not sock.exists()


async def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    sock = tmp_path / "xds.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left:
        left.bind(str(sock))  # bound, never listening: what a crash leaves
    server = await _serve(ServerSettings(tcp_address=None, uds_path=sock))
    try:
        async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
            assert await _fetch_clusters(channel) == ["a", "b"]
    finally:
        await server.stop(1.0)


async def test_stop_leaves_a_path_it_did_not_create(tmp_path: Path) -> None:
    sock = tmp_path / "xds.sock"
    server = await _serve(ServerSettings(tcp_address=None, uds_path=sock))
    # Someone else's socket now sits at the path (ours was unlinked).
    sock.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as theirs:
        theirs.bind(str(sock))
        await server.stop(1.0)
        assert stat.S_ISSOCK(sock.lstat().st_mode)


def _socket_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "file").write_text("not a socket")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere.sock")
    long = tmp_path / ("x" * (120 - len(str(tmp_path))))
    return {
        "file": (tmp_path / "file", "is a file that is not a socket"),
        "directory": (tmp_path / "dir", "is a directory"),
        "symlink": (tmp_path / "link", "is a symlink"),
        "too long": (long, "bytes, longer than the 107"),
        "no parent": (tmp_path / "missing" / "x.sock", "does not exist"),
    }


@pytest.mark.parametrize("case", ["file", "directory", "symlink", "too long", "no parent"])
async def test_unusable_socket_paths_are_refused(tmp_path: Path, case: str) -> None:
    path, reason = _socket_paths(tmp_path)[case]
    with pytest.raises(ServerConfigError, match=reason):
        await _serve(ServerSettings(tcp_address=None, uds_path=path))
    assert (tmp_path / "file").read_text() == "not a socket"  # nothing replaced
    assert (tmp_path / "link").is_symlink()


async def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerConfigError, match="Address already in use"):
            await _serve(ServerSettings(tcp_address=f"127.0.0.1:{port}"))


# -- keys and certificates (items 19, 20, 21) -------------------------------------


def _write(tmp_path: Path, name: str, data: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("garbage", "not an unencrypted PEM private key"),
        ("mismatched", "does not belong to the certificate"),
        ("swapped", "swapped"),
    ],
)
async def test_bad_keys_are_named(
    pki: dict[str, Path], tmp_path: Path, case: str, reason: str
) -> None:
    cert, key = pki["server.crt"], pki["server.key"]
    if case == "garbage":
        key = _write(tmp_path, "garbage.key", b"-----BEGIN PRIVATE KEY-----\nxx\n")
    elif case == "mismatched":
        key = _write(tmp_path, "other.key", _pem(_key()))
    else:
        cert, key = key, cert
    with pytest.raises(ServerConfigError, match=reason):
        await _serve(ServerSettings(tcp_address="127.0.0.1:0", tls=TlsSettings(cert, key)))


async def test_a_readable_key_is_warned_about_and_refused_when_strict(
    pki: dict[str, Path],
) -> None:
    os.chmod(pki["server.key"], 0o644)
    tls = TlsSettings(pki["server.crt"], pki["server.key"])
    with capture_logs() as logs:
        server = await _serve(ServerSettings(tcp_address="127.0.0.1:0", tls=tls))
    await server.stop(1.0)
    assert [e for e in logs if e["event"] == "tls_key_readable"]
    strict = TlsSettings(pki["server.crt"], pki["server.key"], strict_key_perms=True)
    with pytest.raises(ServerConfigError, match="0644 lets group or others read it"):
        await _serve(ServerSettings(tcp_address="127.0.0.1:0", tls=strict))
    os.chmod(pki["server.key"], 0o600)
    server = await _serve(ServerSettings(tcp_address="127.0.0.1:0", tls=strict))
    await server.stop(1.0)


async def test_a_presented_client_certificate_must_verify(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    """--tls-client-ca without --require-client-cert: no certificate is
    tolerated, one from the CA works, and one from another CA fails the TLS
    handshake (the client sees UNAVAILABLE, as for any refused handshake)."""
    other_key = _key()
    other_ca = _cert("other-ca", other_key, None, ca=True)
    rogue_key = _key()
    rogue = _pem(_cert("rogue", rogue_key, (other_ca, other_key)))
    tls = TlsSettings(pki["server.crt"], pki["server.key"], pki["ca"])
    server = await _serve(ServerSettings(tcp_address="127.0.0.1:0", tls=tls))
    target = f"localhost:{server.tcp_port}"
    ca = pki["ca"].read_bytes()

    def creds(key: bytes | None, chain: bytes | None) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(ca, key, chain)

    try:
        good = creds(pki["client.key"].read_bytes(), pki["client.crt"].read_bytes())
        async with grpc.aio.secure_channel(target, good) as channel:
            assert await _fetch_clusters(channel) == ["a", "b"]
        async with grpc.aio.secure_channel(target, creds(None, None)) as channel:
            assert await _fetch_clusters(channel) == ["a", "b"]
        async with grpc.aio.secure_channel(target, creds(_pem(rogue_key), rogue)) as channel:
            assert await _refused(channel) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(1.0)
