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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nodemesh.model.objects import (
    HTTPPolicy,
    HTTPRule,
    L7Redirect,
    RedirectOrigin,
    ServiceName,
)
from nodemesh.xds.translate import Translation, translate
from tests.support.polling import wait_until
from tests.xds.translate import translate_models as m
from tests.xds.translate.envoy_static import ENVOY, static_bootstrap, write_bootstrap

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


def _serving(port: int, envoy: subprocess.Popen[bytes]) -> bool:
    """Whether Envoy serves `port`; False when it exited (e.g. the port was
    taken between choosing it and Envoy binding it)."""

    def state() -> str:
        if envoy.poll() is not None:
            return "exited"
        _request(port, "GET", "/allowed", "127.0.0.1")
        return "serving"

    outcome = wait_until(
        state, what="envoy to serve the listener", timeout=90, interval=0.2, retry_on=(OSError,)
    )
    return outcome == "serving"


def _endpoints(backends: tuple[int, int]) -> dict[ServiceName, dict[int, Any]]:
    return {
        m.V1: {80: (m.backend("127.0.0.1", backends[0]),)},
        m.V2: {80: (m.backend("127.0.0.1", backends[1]),)},
    }


def _cec_translation(proxy_port: int, backends: tuple[int, int]) -> Translation:
    """The canary's CEC steers everyone; a policy restricts 127.0.0.1."""
    base = m.canary_model()
    policy = replace(m.canary_redirect().policies[0], client_ips=("127.0.0.1",), rules=RULES)
    redirect = replace(m.canary_redirect(proxy_port=proxy_port), policies=(policy,))
    model = m.model(m.CANARY_SERVICES, _endpoints(backends), base.envoy_configs, [redirect])
    translation = translate(model)
    assert translation.errors == ()
    return translation


def _policy_translation(proxy_port: int, backends: tuple[int, int]) -> Translation:
    """No CEC: a policy alone redirects httpbin-v1 for the pod 127.0.0.1."""
    policy = HTTPPolicy(m.CNP_REF, m.CURL, ("127.0.0.1",), RULES)
    redirect = L7Redirect(
        service=m.V1,
        port=80,
        protocol="TCP",
        proxy_port=proxy_port,
        listener="nodemesh/l7/default/httpbin-v1/80",
        route_config="nodemesh/l7/default/httpbin-v1/80",
        origin=RedirectOrigin.NETWORK_POLICY,
        owners=(m.CNP_REF,),
        clients=(m.CURL,),
        policies=(policy,),
    )
    translation = translate(m.model(m.CANARY_SERVICES, _endpoints(backends), (), [redirect]))
    assert translation.errors == ()
    return translation


@contextmanager
def _envoy(
    tmp_path: Path,
    backends: tuple[int, int],
    make: Callable[[int, tuple[int, int]], Translation],
) -> Iterator[int]:
    """A real Envoy serving the translation; yields its proxy port."""
    for attempt in range(3):
        proxy_port = _free_port()
        config = static_bootstrap(make(proxy_port, backends))
        path = write_bootstrap(config, tmp_path / f"envoy-{attempt}.json")
        with (tmp_path / f"envoy-{attempt}.log").open("wb") as log:
            envoy = subprocess.Popen(
                [str(ENVOY), "-c", str(path), "--disable-hot-restart", "--log-level", "warn"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            try:
                if _serving(proxy_port, envoy):
                    yield proxy_port
                    return
            finally:
                envoy.terminate()
                envoy.wait(timeout=30)
    raise AssertionError(f"envoy exited three times; see {tmp_path}/envoy-*.log")


def test_rbac_rules_in_real_envoy(tmp_path: Path, backends: tuple[int, int]) -> None:
    with _envoy(tmp_path, backends, _cec_translation) as proxy_port:
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


def test_policy_only_redirect_in_real_envoy(tmp_path: Path, backends: tuple[int, int]) -> None:
    """Only the policy's pods are steered: their requests are held to the rules
    and reach the Service's own backends; an address no policy names is denied."""
    with _envoy(tmp_path, backends, _policy_translation) as proxy_port:
        connection = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
        try:
            connection.request("GET", "/allowed", headers={"Host": "httpbin-v1"})
            response = connection.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["version"] == "v1"
        finally:
            connection.close()
        assert _request(proxy_port, "GET", "/other", "127.0.0.1") == 403
        assert _request(proxy_port, "GET", "/allowed", "127.0.0.2") == 403
