"""A NACK reaches the object's Programmed condition at once (issue 9),
through the wiring `nodemesh serve` uses: the real Envoy rejects a listener,
the ADS server's callbacks wake the status reporter, and the condition is in
the API server (double) without waiting for the reporter's retry.

The retry is set to an hour here, so the only way the condition can arrive
at all is the callback path; before it existed, this test could not pass.
The time it took is printed (run with -s), never asserted: it is a
measurement (docs/benchmarks.md), and timings do not go into assertions."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.apiserver_double import ApiServerDouble, find_type
from integration.k8s_support import busy_cec, serving_with_envoy
from nodemesh.cmd.demo.run import EXAMPLES
from nodemesh.wiring.controlplane import ControlPlane, KubernetesConfig
from nodemesh.xds.server import RequestInfo, RequestKind, StreamInfo, XdsCallbacks
from nodemesh.xds.vocab import LISTENER

pytestmark = pytest.mark.envoy

CEC = find_type("cilium.io", "v2", "ciliumenvoyconfigs")
assert CEC


class NackClock(XdsCallbacks):
    """When the first LDS NACK arrived (event-loop time)."""

    def __init__(self) -> None:
        self.at: float | None = None

    def on_request(self, stream: StreamInfo, request: RequestInfo) -> None:
        if request.kind is RequestKind.NACK and request.type_url == LISTENER and self.at is None:
            self.at = asyncio.get_running_loop().time()


@pytest.fixture
async def serving(tmp_path: Path) -> AsyncIterator[tuple[ApiServerDouble, ControlPlane]]:
    double = ApiServerDouble(bookmark_interval=0.5)
    for path in sorted(Path(EXAMPLES).glob("*.yaml")):
        double.store.load(d for d in yaml.safe_load_all(path.read_text()) if d)
    await double.start()
    k8s = KubernetesConfig(server=double.url, reporter="node-a", status_retry=3600)
    try:
        async with serving_with_envoy(k8s, tmp_path / "envoy") as plane:
            yield double, plane
    finally:
        await double.stop()


def _conditions(double: ApiServerDouble, name: str) -> dict[str, Any]:
    obj = double.store.get(CEC, "default", name)
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def _programmed_reason(double: ApiServerDouble, name: str) -> Any:
    return _conditions(double, name).get("Programmed", {}).get("reason")


async def test_nack_reaches_programmed_through_the_callbacks(
    serving: tuple[ApiServerDouble, ControlPlane],
) -> None:
    double, plane = serving
    clock = NackClock()
    plane.server.subscribe(clock)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        double.store.create(CEC, busy_cec(holder.getsockname()[1]))
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(60):  # the retry is an hour: only callbacks can do it
            # polling the double's store: it offers nothing to wait on
            while _programmed_reason(double, "busy") != "EnvoyNACK":  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        seen = loop.time()
        assert clock.at is not None, "the condition came before any NACK?"
        print(f"NACK to Programmed: {seen - clock.at:.3f}s")
        programmed = _conditions(double, "busy")["Programmed"]
        assert programmed["status"] == "False"
        assert "node node-a rejected Listener" in programmed["message"]
    finally:
        holder.close()
