"""Pieces of a local mesh for integration tests (not a test module).

- `copy_canary`: a private copy of examples/canary. The example pins its
  backends to 127.0.0.1:18081 and :18082 (what `make demo` runs); the copy
  uses free ports so a test can run beside a demo or another test.
- `serve_process`: `nodemesh serve` as a real process.
- `envoy_with_backends`: a real Envoy over TCP ADS plus one demo backend per
  replica the source directory describes.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from nodemesh.cmd.demo.backends import BackendFleet
from nodemesh.cmd.demo.canary import backend_specs
from nodemesh.cmd.demo.run import EXAMPLES
from nodemesh.model.store import MeshStore
from nodemesh.node.envoy_process import EnvoyProcess, render_bootstrap
from nodemesh.sources.files import FileSource

DEMO_PORTS = (18081, 18082)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private_loopback() -> str:
    """A loopback address of this test's own. Proxy ports are deterministic
    from the model and Envoy binds with SO_REUSEPORT, so two Envoys serving
    the same canary on 127.0.0.1 (a demo, another test session) would share
    the listener's connections."""
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"


def copy_canary(into: Path) -> Path:
    src = into / "canary"
    shutil.copytree(EXAMPLES, src)
    backends = src / "local-backends.yaml"
    text = backends.read_text()
    for port in DEMO_PORTS:
        assert f"port: {port}" in text, f"{backends} no longer names port {port}"
        text = text.replace(f"port: {port}", f"port: {free_port()}")
    backends.write_text(text)
    return src


@contextmanager
def serve_process(log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`nodemesh serve ARGS` in its own session; SIGINT and reaped on exit."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodemesh.cmd.main", "serve", *args],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=15)


@asynccontextmanager
async def envoy_with_backends(
    workdir: Path, src: Path, xds_port: int, node_id: str
) -> AsyncIterator[EnvoyProcess]:
    proxy = EnvoyProcess(workdir, render_bootstrap(xds_tcp=("127.0.0.1", xds_port)), node_id)
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
