"""docker-compose's curl client (integration/kind/compose-split.sh), run for
real against what the compose file runs: `nodemesh serve` on a copy of
examples/canary, a real Envoy, httpbin-compatible backends. Only Docker is
missing; the script, the listener discovery and the split check are real."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from canary_copy import copy_canary, free_port

from nodemesh.demo.backends import BackendFleet
from nodemesh.demo.canary import backend_specs
from nodemesh.model.store import MeshStore
from nodemesh.node_envoy import EnvoyProcess, render_bootstrap
from nodemesh.sources.files import FileSource

pytestmark = pytest.mark.envoy

SCRIPT = Path(__file__).parent / "kind" / "compose-split.sh"
# Proxy ports are deterministic from the model, and Envoy binds with
# SO_REUSEPORT: another test's Envoy serving the same canary on 127.0.0.1
# would share our listener's connections. A loopback address of our own
# keeps the traffic (and the counters the script reads) ours.
LISTENER = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    src = copy_canary(tmp_path)
    xds_port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodemesh.cli", "serve", "--source-dir", str(src),
         "--admin", f"127.0.0.1:{free_port()}", "--xds-address", f"127.0.0.1:{xds_port}",
         "--listener-address", LISTENER],
        stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    try:
        yield src, xds_port
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=15)
        log.close()


@pytest.fixture
async def envoy(tmp_path: Path, serve: tuple[Path, int]) -> AsyncIterator[EnvoyProcess]:
    src, xds_port = serve
    proxy = EnvoyProcess(
        tmp_path / "envoy", render_bootstrap(xds_tcp=("127.0.0.1", xds_port)), "compose-node"
    )
    store = MeshStore()
    FileSource(src, store).load()
    fleet = BackendFleet(backend_specs(store.build()))
    await fleet.start()
    try:
        await proxy.start()
        yield proxy
    finally:
        await proxy.stop()
        await fleet.stop()


async def _client(envoy: EnvoyProcess, share: str) -> tuple[int, str]:
    env = {**os.environ, "ADMIN": envoy.admin_url, "REQUESTS": "200", "V2_SHARE": share}
    proc = await asyncio.create_subprocess_exec(
        "sh", str(SCRIPT), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_compose_client_checks_the_split(envoy: EnvoyProcess) -> None:
    code, out = await _client(envoy, "0.10")
    assert code == 0, out
    assert "200 OK: 200/200" in out and out.rstrip().endswith("PASS")
    # The same traffic against a claimed 50/50 must fail: the check can fail.
    code, out = await _client(envoy, "0.50")
    assert code == 1, out
    assert "FAIL: split outside tolerance" in out
