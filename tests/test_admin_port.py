"""The admin port of a real control plane (no Envoy needed): probes, debug
views and metrics, and clean errors for bad queries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports: [{port: 80, targetPort: 8080, protocol: TCP}]
  selector: {app: web}
---
apiVersion: cilium.io/v2
kind: CiliumEnvoyConfig
metadata: {name: web-l7, namespace: default}
spec:
  services: [{name: web, namespace: default}]
  resources:
  - "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
    name: web-route
    virtual_hosts:
    - name: web
      domains: ["*"]
      routes: [{match: {prefix: "/"}, route: {cluster: default/web}}]
"""


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[str, ControlPlane]]:
    (tmp_path / "web.yaml").write_text(SERVICE)
    plane = ControlPlane(
        ControlPlaneConfig(source_dirs=(tmp_path,), xds_tcp="127.0.0.1:0", admin_port=0)
    )
    task = asyncio.create_task(plane.run())
    await asyncio.wait_for(plane.ready.wait(), 10)
    try:
        yield f"http://127.0.0.1:{plane.admin_port}", plane
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def test_probes(admin: tuple[str, ControlPlane]) -> None:
    base, _ = admin
    assert await get(base + "/healthz") == (200, "ok\n")
    status, body = await get(base + "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True}


async def test_readyz_says_why_when_the_source_directory_is_gone(
    admin: tuple[str, ControlPlane], tmp_path: Path
) -> None:
    base, _ = admin
    (tmp_path / "web.yaml").unlink()
    tmp_path.rmdir()
    status, body = await get(base + "/readyz")
    assert status == 503
    assert json.loads(body)["reasons"] == [f"source directory {tmp_path} is not readable"]


async def test_config_dump_requires_a_node_and_filters_by_type(
    admin: tuple[str, ControlPlane],
) -> None:
    base, _ = admin
    status, body = await get(base + "/debug/config_dump")
    assert status == 400 and "node" in json.loads(body)["error"]
    status, body = await get(base + "/debug/config_dump?node=n1&type=clusters")
    assert status == 200
    dump = json.loads(body)
    assert list(dump) == ["CDS"]
    assert "default/web" in dump["CDS"]


async def test_syncz_and_metrics(admin: tuple[str, ControlPlane]) -> None:
    base, plane = admin
    status, body = await get(base + "/debug/syncz")
    syncz = json.loads(body)
    assert plane.model is not None
    assert syncz["model"]["version"] == plane.model.version
    assert syncz["clients"] == []
    status, text = await get(base + "/metrics")
    assert status == 200
    assert "nodemesh_model_builds_total" in text
    assert "nodemesh_xds_connected_streams" in text
