"""`nodemesh status` for the file source shows each route's status.parents."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from nodemesh.cmd.status_view import format_status
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig

OBJECTS = [
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "cart", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]},
    },
    {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "split", "namespace": "shop", "generation": 2},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "cart", "port": 80}],
            "rules": [{"backendRefs": [{"name": "cart-v2", "port": 80}]}],
        },
    },
]


async def test_status_shows_route_conditions(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all(OBJECTS))
    plane = ControlPlane(
        ControlPlaneConfig(
            source_dirs=(tmp_path,), xds_tcp=None, xds_socket=tmp_path / "x.sock", admin_port=0
        )
    )
    task = asyncio.create_task(plane.run(), name="control-plane")
    try:
        await asyncio.wait_for(plane.ready.wait(), 30)
        syncz = plane.syncz()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    [route] = syncz["routes"]
    assert route["object"] == "HTTPRoute shop/split" and route["generation"] == 2
    [parent] = route["parents"]
    assert parent["controllerName"] == "nodemesh.io/mesh-controller"
    text = format_status(syncz)
    assert "HTTPRoute shop/split  Service shop/cart:80  True Accepted" in text
    assert "False BackendNotFound" in text
    assert "ResolvedRefs: spec.rules[0].backendRefs[0]: Service shop/cart-v2 does not exist" in text
