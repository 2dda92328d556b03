"""What an operator sees, through the real commands: `nodemesh serve` as a
process, a real Envoy over TCP ADS, then `nodemesh status` and
`nodemesh config-dump` as processes, including a config Envoy itself rejects.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from integration.local_mesh import (
    copy_canary,
    envoy_with_backends,
    free_port,
    private_loopback,
    serve_process,
)
from nodemesh.cmd.demo.traffic import request_loop
from nodemesh.node.envoy_process import EnvoyProcess
from tests.support.polling import wait_until

pytestmark = pytest.mark.envoy

NODMESH = [sys.executable, "-m", "nodemesh.cmd.main"]


def nodemesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NODMESH, *args], capture_output=True, text=True, timeout=30)


def wait_for(predicate_output: str, *args: str, timeout: float = 30.0) -> str:
    def output() -> str:
        done = nodemesh(*args)
        out = done.stdout + done.stderr
        assert predicate_output in out, f"\n{out}"
        return out

    return wait_until(
        output,
        what=f"{predicate_output!r} in `nodemesh {' '.join(args)}`",
        timeout=timeout,
        interval=0.2,
        retry_on=(AssertionError,),
    )


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Path, str, int]]:
    src = copy_canary(tmp_path)
    admin = f"127.0.0.1:{free_port()}"
    xds_port = free_port()
    with serve_process(
        tmp_path / "serve.log",
        *("--source-dir", str(src), "--admin", admin, "--xds-address", f"127.0.0.1:{xds_port}"),
        *("--listener-address", private_loopback()),
    ):
        wait_for('"generation": 1', "status", "--admin", admin, "-o", "json")
        yield src, admin, xds_port


@pytest.fixture
async def envoy(tmp_path: Path, serve: tuple[Path, str, int]) -> AsyncIterator[EnvoyProcess]:
    src, _, xds_port = serve
    async with envoy_with_backends(tmp_path / "envoy", src, xds_port, "ops-node") as proxy:
        yield proxy


def listener_address(admin: str) -> tuple[str, int]:
    dump = yaml.safe_load(
        nodemesh("config-dump", "--node-id", "ops-node", "--type", "listeners", "-o", "yaml",
                 "--admin", admin).stdout
    )  # fmt: skip
    (listener,) = dump["LDS"].values()
    socket_address = listener["address"]["socket_address"]
    return socket_address["address"], int(socket_address["port_value"])


async def test_status_shows_synced_then_envoys_own_nack_message(
    serve: tuple[Path, str, int], envoy: EnvoyProcess
) -> None:
    src, admin, _ = serve
    table = await asyncio.to_thread(wait_for, "ops-node", "status", "--admin", admin)
    table = await asyncio.to_thread(wait_for, "SYNCED", "status", "--admin", admin)
    row = next(line for line in table.splitlines() if line.startswith("ops-node"))
    assert row.count("SYNCED") == 4, table

    host, port = listener_address(admin)
    await envoy.wait_for_listener(port)
    url = f"http://{host}:{port}/headers"

    # A listener whose port another process holds: nothing we can see
    # statically is wrong with it, so only Envoy can reject it (bind fails).
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = holder.getsockname()[1]
    (src / "busy-listener.yaml").write_text(yaml.safe_dump(busy_listener_cec(busy)))
    try:
        table = await asyncio.to_thread(
            wait_for, "rejected by Envoy (NACK)", "status", "--admin", admin
        )
        assert "ops-node LDS" in table and "ERROR" in table, table
        nack = next(line for line in table.splitlines() if "ops-node LDS" in line)
        assert str(busy) in nack, nack  # Envoy's own message names the address

        result = await request_loop(url, "httpbin", 50, 4)
        assert result.ok == 50, result.failures[:3]
    finally:
        holder.close()


def busy_listener_cec(port: int) -> dict[str, object]:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "busy",
        "rds": {"route_config_name": "busy-route"},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEnvoyConfig",
        "metadata": {"name": "busy", "namespace": "default"},
        "spec": {
            "resources": [
                {
                    "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                    "name": "busy-listener",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
                },
                {
                    "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                    "name": "busy-route",
                    "virtual_hosts": [
                        {
                            "name": "all",
                            "domains": ["*"],
                            "routes": [
                                {
                                    "match": {"prefix": "/"},
                                    "route": {"cluster": "default/httpbin-v1"},
                                }
                            ],
                        }
                    ],
                },
            ]
        },
    }


def test_config_dump_unknown_admin_is_one_clear_line() -> None:
    done = nodemesh("config-dump", "--node-id", "n", "--admin-address", f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert done.stderr.startswith("nodemesh config-dump: cannot read http://")
    assert "Traceback" not in done.stderr
