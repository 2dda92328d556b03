"""Policy semantics judged by a real Envoy serving real requests (loopback only).

The canary's CEC steers every client to Envoy; a network policy restricts the
client 127.0.0.1 to anchored method/path rules or a header. Requests from
127.0.0.2, which no policy names, stay allowed. The translation is served
statically (EDS and RDS inlined), exactly as translated otherwise.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import translate_models as m
from envoy_static import ENVOY, static_bootstrap, write_bootstrap

from nodemesh.model.objects import HTTPRule
from nodemesh.xds.translate import translate

pytestmark = pytest.mark.envoy

RULES = (
    HTTPRule(method="GET", path="/allowed(/.*)?"),
    HTTPRule(headers=("X-Probe: yes",)),
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Backend(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = json.dumps({"version": self.server.version, "path": self.path}).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def backends() -> Iterator[tuple[int, int]]:
    servers = []
    for version in ("v1", "v2"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
        server.version = version  # type: ignore[attr-defined]
        threading.Thread(
            target=server.serve_forever, name=f"backend-{version}", daemon=True
        ).start()
        servers.append(server)
    yield servers[0].server_address[1], servers[1].server_address[1]
    for server in servers:
        server.shutdown()
        server.server_close()


def _request(port: int, method: str, path: str, source: str, **headers: str) -> int:
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request(method, path, headers={"Host": "httpbin", **headers})
        return connection.getresponse().status
    finally:
        connection.close()


def _wait_serving(port: int, envoy: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert envoy.poll() is None, "envoy exited"
        try:
            _request(port, "GET", "/allowed", "127.0.0.1")
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("envoy never served the listener")


def test_rbac_rules_in_real_envoy(tmp_path: Path, backends: tuple[int, int]) -> None:
    proxy_port = _free_port()
    base = m.canary_model()
    policy = replace(m.canary_redirect().policies[0], client_ips=("127.0.0.1",), rules=RULES)
    redirect = replace(m.canary_redirect(proxy_port=proxy_port), policies=(policy,))
    endpoints = {
        m.V1: {80: (m.backend("127.0.0.1", backends[0]),)},
        m.V2: {80: (m.backend("127.0.0.1", backends[1]),)},
    }
    model = m.model(m.CANARY_SERVICES, endpoints, base.envoy_configs, [redirect])
    translation = translate(model)
    assert translation.errors == ()
    config = write_bootstrap(static_bootstrap(translation), tmp_path / "envoy.json")
    envoy = subprocess.Popen(
        [str(ENVOY), "-c", str(config), "--disable-hot-restart", "--log-level", "warn"],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "envoy.log").open("wb"),
    )
    try:
        _wait_serving(proxy_port, envoy)
        curl = "127.0.0.1"
        assert _request(proxy_port, "GET", "/allowed", curl) == 200
        assert _request(proxy_port, "GET", "/allowed/deeper", curl) == 200
        assert _request(proxy_port, "GET", "/allowedX", curl) == 403  # anchored
        assert _request(proxy_port, "GET", "/x/allowed", curl) == 403  # anchored
        assert _request(proxy_port, "POST", "/allowed", curl) == 403  # method
        assert _request(proxy_port, "GET", "/other", curl) == 403
        # Paths are normalized before the rules see them: no way around a rule.
        assert _request(proxy_port, "GET", "/allowed/../other", curl) == 403
        assert _request(proxy_port, "GET", "//allowed", curl) == 200
        assert _request(proxy_port, "POST", "/other", curl, **{"X-Probe": "yes"}) == 200
        assert _request(proxy_port, "POST", "/other", curl, **{"X-Probe": "no"}) == 403
        # A client no policy names: the CEC steers it, nothing restricts it.
        assert _request(proxy_port, "POST", "/other", "127.0.0.2") == 200
    finally:
        envoy.terminate()
        envoy.wait(timeout=30)
