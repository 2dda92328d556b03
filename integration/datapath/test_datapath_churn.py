"""Scenario 5: backend churn under a connect loop: zero errors, and no
connect reaches a removed backend.

A removed backend's server is killed right after the apply returns and one
more batch of connects has completed (so connects begun before the removal
have finished, as a terminating pod would drain them). From then on, any
connect the kernel still sent there would fail with ECONNREFUSED or EOF and
show up in the loop's error count."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb

from .conftest import Datapath
from .node import MeshNode
from .plans import frontend, plan

pytestmark = pytest.mark.privileged

VIP = "10.96.0.10"


def test_churn_under_connect_loop(node: MeshNode, datapath: Datapath, workdir: Path) -> None:
    client = node.add_pod("default", "client")
    pods = [node.add_pod("default", f"b{i}") for i in range(1, 6)]
    servers = {p.name: node.server(p, "tcp-server", "8080", p.name) for p in pods}
    addr = {p.name: (p.ip, 8080) for p in pods}

    def set_backends(names: list[str]) -> None:
        datapath.apply(plan(frontend(VIP, 80, pb.TCP, [addr[n] for n in names])))

    set_backends(["b1", "b2"])
    stop = workdir / "stop"
    loop = node.probe(client, "tcp-loop", VIP, "80", str(stop))
    assert loop.stdout is not None and loop.stdout.readline().strip() == "ready"

    steps = [
        (["b1", "b2", "b3"], []),
        (["b2", "b3"], ["b1"]),
        (["b3", "b4", "b5"], ["b2"]),
        (["b5"], ["b3", "b4"]),
        (["b5"], []),
    ]
    for backends, removed in steps:
        set_backends(backends)
        node.client(client, "tcp-client", VIP, "80", "5")
        for name in removed:
            os.killpg(servers[name].pid, signal.SIGKILL)
            servers[name].wait(timeout=30)
        # Let the loop make progress on each layout; its count is the evidence.
        for _ in range(3):
            probe = node.client(client, "tcp-client", VIP, "80", "5")
            assert isinstance(probe, list)
            assert all("error" not in r for r in probe)

    stop.touch()
    out, _ = loop.communicate(timeout=60)
    report = json.loads(out)
    assert report["errors"] == {}
    assert sum(report["backends"].values()) > 0
    assert set(report["backends"]) <= {"b1", "b2", "b3", "b4", "b5"}
