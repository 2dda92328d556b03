"""`nodemesh k8s-watch` as a user runs it: a kubeconfig, the real client, and
the API server double serving a malformed Service (one a real API server
refuses to store). The rest runs against the real server in
integration/cluster/test_cluster_cli.py."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from integration.apiserver_double import ApiServerDouble, find_type
from integration.k8s_support import seed

SVC = find_type("", "v1", "services")
assert SVC


@pytest.fixture
async def double() -> AsyncIterator[ApiServerDouble]:
    server = ApiServerDouble(bookmark_interval=0.5)
    seed(server, services=3)
    server.store.create(
        SVC,
        {
            "metadata": {"name": "broken", "namespace": "default"},
            "spec": {"clusterIP": "10.96.9.9", "ports": [{"port": "eighty"}]},
        },
    )
    await server.start()
    yield server
    await server.stop()


def _kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "double", "cluster": {"server": server}}],
        "users": [{"name": "dev", "user": {"token": "laptop-token"}}],
        "contexts": [{"name": "dev@double", "context": {"cluster": "double", "user": "dev"}}],
        "current-context": "dev@double",
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def _nodemesh(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodemesh.cmd.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_once_with_a_kubeconfig_prints_the_model(
    double: ApiServerDouble, tmp_path: Path
) -> None:
    config = _kubeconfig(tmp_path / "config", double.url)
    code, out, err = await _nodemesh("k8s-watch", "--kubeconfig", str(config), "--once")
    assert code == 0, err
    assert "services 3  endpoint slices 3" in out
    assert "Service default/broken: spec.ports[0].port" in out
    assert double.authorizations == {"Bearer laptop-token"}, (
        "the kubeconfig's credentials were used"
    )
    assert not any(m in ("PATCH", "POST") for m, _ in double.requests), "read-only by default"


async def test_bad_kubeconfig_is_one_clear_line(tmp_path: Path) -> None:
    code, _, err = await _nodemesh("k8s-watch", "--kubeconfig", str(tmp_path / "missing"), "--once")
    assert code == 2
    assert err == f"nodemesh k8s-watch: kubeconfig {tmp_path / 'missing'} does not exist\n"
    assert "Traceback" not in err
