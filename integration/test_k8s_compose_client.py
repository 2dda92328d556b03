"""docker-compose's curl client (integration/kind/compose-split.sh), run for
real against what the compose file runs: `nodemesh serve` on a copy of
examples/canary, a real Envoy, httpbin-compatible backends. Only Docker is
missing; the script, the listener discovery and the split check are real."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from integration.local_mesh import (
    copy_canary,
    envoy_with_backends,
    free_port,
    private_loopback,
    serve_process,
)
from nodemesh.node.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

SCRIPT = Path(__file__).parent / "kind" / "compose-split.sh"
# Proxy ports are deterministic from the model, and Envoy binds with
# SO_REUSEPORT: another test's Envoy serving the same canary on 127.0.0.1
# would share our listener's connections. A loopback address of our own
# keeps the traffic (and the counters the script reads) ours.
LISTENER = private_loopback()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    src = copy_canary(tmp_path)
    xds_port = free_port()
    with serve_process(
        tmp_path / "serve.log",
        *("--source-dir", str(src), "--admin", f"127.0.0.1:{free_port()}"),
        *("--xds-address", f"127.0.0.1:{xds_port}", "--listener-address", LISTENER),
    ):
        yield src, xds_port


@pytest.fixture
async def envoy(tmp_path: Path, serve: tuple[Path, int]) -> AsyncIterator[EnvoyProcess]:
    src, xds_port = serve
    async with envoy_with_backends(tmp_path / "envoy", src, xds_port, "compose-node") as proxy:
        yield proxy


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
