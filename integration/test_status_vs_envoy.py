"""Every claim `nodemesh status` makes about an Envoy, checked against that
Envoy's own /config_dump (issue 10, item 17), through broken files, a NACK,
the recovered NACK, a deletion, an Envoy reconnect and a control-plane
restart, over SotW and delta.

`nodemesh status` renders /debug/syncz (`ControlPlane.syncz()`); for each
type of each connected Envoy it claims a state, a version and, for a NACK,
Envoy's message. Checked claims:
- SYNCED: Envoy's active resources of the type are exactly the server's
  (names, and per resource the version: SotW's type version, delta's
  resource versions);
- ERROR with a message: Envoy reports a rejected resource of that type,
  named in that message along with the error details Envoy keeps for it;
- no NACK listed: Envoy reports no rejected resource of that type.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.local_mesh import copy_canary, free_port, private_loopback
from integration.test_operator_views import busy_listener_cec
from nodemesh.node.envoy_process import EnvoyProcess, render_bootstrap
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig
from nodemesh.xds.server import ConfigStatus
from nodemesh.xds.translate import TranslateOptions
from nodemesh.xds.vocab import BY_SHORT_NAME

pytestmark = pytest.mark.envoy

NODE = "truth-node"


@dataclass
class Held:
    """What Envoy's config dump says it holds for one type."""

    active: dict[str, str]  # name -> version_info
    errors: dict[str, str]  # name -> error details


def _envoy_view(dump: dict[str, Any]) -> dict[str, Held]:
    view = {short: Held({}, {}) for short in ("CDS", "EDS", "LDS", "RDS")}
    for config in dump["configs"]:
        kind = config["@type"].rsplit(".", 1)[-1]
        if kind == "ClustersConfigDump":
            for c in config.get("dynamic_active_clusters", []):
                view["CDS"].active[c["cluster"]["name"]] = c.get("version_info", "")
            for c in config.get("dynamic_warming_clusters", []):
                view["CDS"].active[c["cluster"]["name"]] = "(warming)"
        elif kind == "ListenersConfigDump":
            for lst in config.get("dynamic_listeners", []):
                if "active_state" in lst:
                    view["LDS"].active[lst["name"]] = lst["active_state"].get("version_info", "")
                if "error_state" in lst:
                    error = lst["error_state"]
                    name = lst.get("name") or error.get("failed_configuration", {}).get("name", "?")
                    view["LDS"].errors[name] = error.get("details", "")
        elif kind == "RoutesConfigDump":
            for r in config.get("dynamic_route_configs", []):
                view["RDS"].active[r["route_config"]["name"]] = r.get("version_info", "")
        elif kind == "EndpointsConfigDump":
            for e in config.get("dynamic_endpoint_configs", []):
                view["EDS"].active[e["endpoint_config"]["cluster_name"]] = e.get("version_info", "")
    return view


async def _check_claims(plane: ControlPlane, envoy: EnvoyProcess, api: str) -> None:
    (client,) = [c for c in plane.syncz()["clients"] if c["node"] == NODE]
    held = _envoy_view(json.loads(await envoy.admin_get("/config_dump?include_eds")))
    served = plane.cache.config_dump(NODE)
    (status,) = [c for c in plane.server.clients() if c.node_id == NODE]
    for short, claim in client["types"].items():
        type_url = BY_SHORT_NAME[short]
        envoy_has = held[short]
        if claim["state"] == "SYNCED":
            # What this Envoy asked for and the server holds (RDS/EDS are
            # named subscriptions: a route of a rejected listener is not).
            claimed = {r.name for r in status.types[type_url].resources}
            assert claimed == set(envoy_has.active), (short, claim)
            assert claimed <= set(served.get(type_url, {})), short
            assert claim["resources"] == len(claimed), (short, claim)
            assert "(warming)" not in envoy_has.active.values(), short
            # Envoy's dump leaves EDS versions empty: nothing to compare.
            reported = {n: v for n, v in envoy_has.active.items() if v}
            if api == "GRPC":
                assert set(reported.values()) <= {claim["version"]}, (short, claim)
            else:
                versions = {r.name: r.version for r in status.types[type_url].resources}
                assert reported == {n: versions[n] for n in reported}, short
        if claim["error"] is not None:
            assert claim["state"] == "ERROR", (short, claim)
            # Envoy's NACK message names the resource and carries the detail
            # its config dump keeps for it.
            assert any(
                name in claim["error"] and detail in claim["error"]
                for name, detail in envoy_has.errors.items()
            ), (short, claim, envoy_has.errors)
        else:
            assert not envoy_has.errors, (short, envoy_has.errors)


async def _synced(plane: ControlPlane) -> None:
    try:
        await plane.wait_synced(NODE, 60)
    except TimeoutError:
        clients = [c for c in plane.server.clients() if c.node_id == NODE]
        types = [
            (
                t.short_name,
                t.status.value,
                t.pending,
                [(r.name, r.status.value) for r in t.resources],
            )
            for c in clients
            for t in c.types.values()
        ]
        labels = [(c.snapshot_label, plane.model.version if plane.model else None) for c in clients]
        raise AssertionError(f"never SYNCED: {labels} {types}") from None


def _settled_now(plane: ControlPlane) -> bool:
    """On the current model, nothing in flight, and every resource SYNCED
    except names the server does not have (a deleted listener's route that
    the draining listener still subscribes to, for Envoy's drain time: status
    says NOT_SENT, and Envoy's dump still shows the old route active)."""
    model = plane.model
    clients = [c for c in plane.server.clients() if c.node_id == NODE]
    if model is None or len(clients) != 1 or clients[0].snapshot_label != model.version:
        return False
    return all(
        not t.pending
        and all(
            r.status is ConfigStatus.SYNCED or r.client_status.value == "DOES_NOT_EXIST"
            for r in t.resources
        )
        for t in clients[0].types.values()
    )


async def _settled(plane: ControlPlane) -> None:
    async with asyncio.timeout(60):
        while True:
            changed = plane.sync_signal.changed()
            if _settled_now(plane):
                return
            await changed.wait()


async def _new_model(plane: ControlPlane, before: str | None) -> None:
    """Until the file source has turned a change into a new model version."""
    async with asyncio.timeout(60):
        while plane.model is None or plane.model.version == before:
            changed = plane.sync_signal.changed()  # publish() notifies it
            await changed.wait()


async def _state(plane: ControlPlane, short: str, state: str) -> None:
    async with asyncio.timeout(60):
        while True:
            changed = plane.sync_signal.changed()
            clients = [c for c in plane.syncz()["clients"] if c["node"] == NODE]
            if clients and clients[0]["types"].get(short, {}).get("state") == state:
                return
            await changed.wait()


@dataclass
class Scene:
    src: Path
    xds_port: int
    listen: str
    plane: ControlPlane
    task: asyncio.Task[None]

    def start_plane(self) -> None:
        self.plane = ControlPlane(
            ControlPlaneConfig(
                source_dirs=[self.src],
                xds_tcp=f"127.0.0.1:{self.xds_port}",
                admin_port=0,
                translate=TranslateOptions(listener_address=self.listen),
            )
        )
        self.task = asyncio.create_task(self.plane.run(), name="control-plane")

    async def stop_plane(self) -> None:
        self.task.cancel()
        await asyncio.wait([self.task])


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    src = copy_canary(tmp_path)
    found = Scene(src, free_port(), private_loopback(), None, None)  # type: ignore[arg-type]
    found.start_plane()
    try:
        yield found
    finally:
        await found.stop_plane()


@pytest.mark.parametrize("api", ["GRPC", "DELTA_GRPC"])
async def test_status_claims_match_envoys_config_dump(
    tmp_path: Path, scene: Scene, api: str
) -> None:
    bootstrap = render_bootstrap(xds_tcp=("127.0.0.1", scene.xds_port), api_type=api)
    envoy = EnvoyProcess(tmp_path / "envoy", bootstrap, NODE)
    await envoy.start()
    try:
        await _synced(scene.plane)
        await _check_claims(scene.plane, envoy, api)

        # A broken file: nothing changes for Envoy, and status says so.
        (scene.src / "broken.yaml").write_text("kind: [unclosed\n")
        await asyncio.sleep(0.5)  # the file source's settle; nothing to wait on
        await _synced(scene.plane)
        await _check_claims(scene.plane, envoy, api)

        # A listener only Envoy can reject (its port is taken): a NACK.
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        try:
            busy = scene.src / "busy.yaml"
            before = scene.plane.model.version if scene.plane.model else None
            busy.write_text(yaml.safe_dump(busy_listener_cec(holder.getsockname()[1])))
            await _new_model(scene.plane, before)
            await _state(scene.plane, "LDS", "ERROR")
            await _check_claims(scene.plane, envoy, api)

            # Recovered: the bad listener is gone, so is the NACK.
            before = scene.plane.model.version if scene.plane.model else None
            busy.unlink()
            await _new_model(scene.plane, before)
            await _synced(scene.plane)
            await _check_claims(scene.plane, envoy, api)
        finally:
            holder.close()

        # A deletion: the CEC and everything it brought.
        before = scene.plane.model.version if scene.plane.model else None
        (scene.src / "traffic-split.yaml").unlink()
        await _new_model(scene.plane, before)
        await _settled(scene.plane)
        await _check_claims(scene.plane, envoy, api)

        # The control plane restarts; Envoy reconnects holding the current
        # versions and must show SYNCED (not STALE) without a push.
        await scene.stop_plane()
        scene.start_plane()
        await _settled(scene.plane)
        await _check_claims(scene.plane, envoy, api)
    finally:
        await envoy.stop()
