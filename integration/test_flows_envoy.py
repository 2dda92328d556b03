"""L7 flows from the real node Envoy's gRPC access log (ALS).

The canary's requests through a real Envoy become L7 flows carrying the
route and the upstream cluster Envoy chose, so the 90/10 split is visible in
the flows themselves; with the agent's ALS socket down Envoy keeps serving
and counts the entries it could not deliver in its own stats.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import yaml

from integration.flow_rig import NODE, flow_rig
from integration.local_mesh import private_loopback
from nodemesh._gen.nodemesh.v1 import flow_pb2, observer_pb2
from nodemesh.cmd.demo.traffic import judge_split, request_loop
from nodemesh.flows.servicemap import ServiceMap
from tests.support.factory import k8s_pod
from tests.support.polling import wait_until_async

pytestmark = pytest.mark.envoy

SPLIT = {"default/httpbin-v1": 90, "default/httpbin-v2": 10}


async def test_canary_requests_become_l7_flows_showing_the_split(tmp_path: Path) -> None:
    async with flow_rig(tmp_path) as rig:
        result = await request_loop(rig.url(), "httpbin", 400, 8, rig.workloads)
        assert not result.failures
        await wait_until_async(
            lambda: len(rig.collector.ring) >= 400, what="400 L7 flows", timeout=20
        )
        responses = await rig.get_flows(observer_pb2.GetFlowsRequest())
        flows = [r.flow for r in responses]
        assert len(flows) == 400
        by_cluster = Counter(f.l7.upstream_cluster for f in flows)
        assert all(v.within for v in judge_split(SPLIT, by_cluster)), by_cluster
        # What the flows and the client saw agree request for request.
        assert by_cluster == result.by_workload
        sample = flows[0]
        assert sample.Type == flow_pb2.L7 and sample.verdict == flow_pb2.FORWARDED
        assert sample.l7.http.method == "GET" and sample.l7.http.url == "/headers"
        assert sample.l7.http.code == 200
        assert sample.destination.workloads[0].name in {"httpbin-v1", "httpbin-v2"}
        assert sample.destination_service.name in {"httpbin-v1", "httpbin-v2"}
        assert sample.l7.backend_address.startswith("127.0.0.1:")
        assert "reserved:host" in sample.source.labels  # the client is on loopback
        assert rig.collector.malformed_access_logs == 0
        # The golden metrics, on the admin port: requests by workload and code.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{rig.plane.admin_port}/metrics") as resp,
        ):
            metrics = await resp.text()
        for workload in ("httpbin-v1", "httpbin-v2"):
            assert (
                f'destination_workload="{workload}",method="GET",response_code="200"'
            ) in metrics
        assert "nodemesh_http_request_duration_seconds_bucket" in metrics


async def test_envoy_serves_with_the_agent_down_and_streams_once_it_is_back(
    tmp_path: Path,
) -> None:
    """Envoy 1.40 counts an entry flushed into a stream that then failed as
    `logs_written`, not `logs_dropped` (measured here): the loss shows in the
    ALS cluster's own stats, as failed connects and 503'd streams."""
    async with flow_rig(tmp_path, start_flows=False) as rig:
        result = await request_loop(rig.url(), "httpbin", 50, 4, rig.workloads)
        assert not result.failures and result.ok == 50

        async def connects_failed() -> bool:
            stats = await rig.envoy.stats("cluster.nodemesh_als.")
            return stats.get("cluster.nodemesh_als.upstream_cx_connect_fail", 0) > 0

        await wait_until_async(connects_failed, what="Envoy counting failed ALS connects")
        await rig.server.start()  # the agent is back
        again = await request_loop(rig.url(), "httpbin", 20, 4, rig.workloads)
        assert not again.failures
        await wait_until_async(
            lambda: len(rig.collector.ring) >= 20, what="flows once the agent is back"
        )
        # Of the 50 sent while it was down, Envoy delivers what its logger still
        # buffered (7 of them in one run here); the rest are gone.
        assert len(rig.collector.ring) < 70
        # `observe --status --envoy-admin` shows Envoy's side of that loss.
        shown = await _observe_status(rig.server.observer_target, rig.envoy.admin_url)
        failed = [line for line in shown if "connects to the agent failed" in line]
        assert len(failed) == 1 and int(failed[0].rsplit(": ", 1)[1]) > 0, shown
        assert any(line.strip().startswith("entries written: ") for line in shown), shown


async def _observe_status(observer: str, envoy_admin: str) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodemesh.cmd.main", "observe", f"--server={observer}",
        "--status", f"--envoy-admin={envoy_admin}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().splitlines()


async def test_a_policy_denial_is_a_dropped_flow_drawn_red(tmp_path: Path) -> None:
    """A CNP HTTP rule answering 403 (Envoy's RBAC filter) is a DROPPED flow,
    and the service map marks its edge denied."""
    client_ip = private_loopback()
    curl = k8s_pod("curl", ip=client_ip, labels={"app": "curl"}, node=NODE)
    async with flow_rig(tmp_path, manifests=[curl]) as rig:
        path = rig.plane.config.source_dirs[0] / "traffic-split.yaml"
        docs = list(yaml.safe_load_all(path.read_text()))
        for doc in docs:
            if doc["kind"] == "CiliumNetworkPolicy":
                doc["spec"]["egress"][0]["rules"]["http"] = [{"method": "GET", "path": "/headers"}]
        before = rig.plane.model.generation if rig.plane.model else None
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        await wait_until_async(
            lambda: rig.plane.model is not None and rig.plane.model.generation != before,
            what="the policy edit in the model",
        )
        await rig.plane.wait_synced(NODE)
        connector = aiohttp.TCPConnector(force_close=True, local_addr=(client_ip, 0))
        async with aiohttp.ClientSession(connector=connector) as session:

            async def denied() -> bool:
                async with session.get(rig.url("/get"), headers={"Host": "httpbin"}) as resp:
                    return resp.status == 403

            # Envoy ACKs before the new filter chain takes over: until it denies.
            await wait_until_async(denied, what="the new policy denying GET /get")
        await wait_until_async(
            lambda: any(f.verdict == flow_pb2.DROPPED for f in rig.collector.ring.recent()),
            what="a DROPPED flow",
        )
        dropped = [f for f in rig.collector.ring.recent() if f.verdict == flow_pb2.DROPPED]
        assert {(f.l7.http.code, f.l7.http.url, f.source.pod_name) for f in dropped} == {
            (403, "/get", "curl")
        }
        service_map = ServiceMap()
        for flow in dropped:
            service_map.add(flow)
        (edge,) = service_map.graph()["edges"]
        assert edge["source"] == "default/curl" and edge["denied"] == len(dropped)
