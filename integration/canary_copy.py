"""A private copy of examples/canary for one test.

The example pins its backends to 127.0.0.1:18081 and :18082 (what `make demo`
runs); a test rewrites those to free ports so it can run beside a demo or
another test.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from nodemesh.demo.run import EXAMPLES

DEMO_PORTS = (18081, 18082)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
