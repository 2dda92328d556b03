"""`nodemesh serve` startup errors are one line and exit 2, in a real
process (issue 10, item 19): ports in use, unusable socket paths, and
TLS flags that do not go together."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _serve(tmp_path: Path, *flags: str) -> tuple[int, str]:
    argv = [sys.executable, "-m", "nodemesh", "serve", "--source-dir", str(tmp_path)]
    argv += ["--log-level", "error", *flags]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("xds", "cannot listen on '127.0.0.1:{port}': Address already in use"),
        ("admin", "admin port: cannot listen on 127.0.0.1:{port}"),
    ],
)
def test_a_port_in_use_is_one_line(
    tmp_path: Path, taken_port: int, where: str, message: str
) -> None:
    flags = {
        "xds": ["--xds-address", f"127.0.0.1:{taken_port}", "--admin-address", "127.0.0.1:0"],
        "admin": ["--xds-address", "127.0.0.1:0", "--admin-address", f"127.0.0.1:{taken_port}"],
    }[where]
    code, err = _serve(tmp_path, *flags)
    assert code == 2, err
    assert err.startswith(f"nodemesh serve: {message.format(port=taken_port)}"), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_socket_path_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_text("mine")
    code, err = _serve(tmp_path, "--xds-address", "", "--xds-socket", str(path))
    assert code == 2
    reason = "is a file that is not a socket; refusing to replace it"
    assert err == f"nodemesh serve: xDS socket '{path}': {reason}\n"
    assert path.read_text() == "mine"


def test_require_client_cert_without_a_ca_is_one_line(tmp_path: Path) -> None:
    code, err = _serve(tmp_path, "--require-client-cert")
    assert (code, err) == (2, "nodemesh serve: --require-client-cert needs --tls-client-ca\n")


def test_a_swapped_key_is_one_line(tmp_path: Path) -> None:
    from tests.xds.server.test_ads_transport import _cert, _key, _pem

    key = _key()
    cert, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_bytes(_pem(_cert("localhost", key, None)))
    key_file.write_bytes(_pem(key))
    key_file.chmod(0o600)
    code, err = _serve(tmp_path, "--tls-cert", str(key_file), "--tls-key", str(cert))
    assert code == 2, err
    assert err.startswith(f"nodemesh serve: TLS certificate '{key_file}': not a PEM certificate")
    assert "swapped" in err and err.count("\n") == 1
