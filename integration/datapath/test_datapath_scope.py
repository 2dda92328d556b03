"""Scenario 6: zero backends fail fast with ECONNREFUSED; what is not a VIP,
and whoever is outside the mesh cgroup, is left alone."""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb

from .conftest import Datapath
from .node import MeshNode
from .plans import frontend, plan

pytestmark = pytest.mark.privileged

VIP, EMPTY_VIP = "10.96.0.10", "10.96.0.30"


def test_zero_backends_refuse_and_scope_is_respected(node: MeshNode, datapath: Datapath) -> None:
    client, b1 = node.add_pod("default", "client"), node.add_pod("default", "b1")
    node.server(b1, "tcp-server", "8080", "b1")
    node.server(b1, "tcp-server", "80", "b1-direct")
    # A mesh process living in the node namespace (host network), beside an outsider.
    hostnet = node.mesh / "hostnet"
    hostnet.mkdir()
    datapath.apply(
        plan(
            frontend(VIP, 80, pb.TCP, [(b1.ip, 8080)]),
            frontend(EMPTY_VIP, 80, pb.TCP, []),
            frontend(EMPTY_VIP, 53, pb.UDP, []),
        )
    )

    refused: list[dict[str, Any]] = node.client(client, "tcp-client", EMPTY_VIP, "80", "3")  # type: ignore[assignment]
    assert {r.get("error") for r in refused} == {"ECONNREFUSED"}
    udp: list[dict[str, Any]] = node.client(client, "udp-client", EMPTY_VIP, "53", "3")  # type: ignore[assignment]
    assert {r.get("error") for r in udp} == {"ECONNREFUSED"}

    # Not a VIP: a pod IP and port, reached as addressed.
    direct: list[dict[str, Any]] = node.client(client, "tcp-client", b1.ip, "80", "3")  # type: ignore[assignment]
    assert {r.get("backend") for r in direct} == {"b1-direct"}
    assert {r["getpeername"] for r in direct} == {f"{b1.ip}:80"}

    # The same VIP from the node namespace: translated inside the mesh cgroup,
    # untouched outside it (the node has no route to the VIP range, so it fails
    # locally with ENETUNREACH and nothing leaves).
    inside: list[dict[str, Any]] = node.client(None, "tcp-client", VIP, "80", "3", cgroup=hostnet)  # type: ignore[assignment]
    assert {r.get("backend") for r in inside} == {"b1"}
    outside: list[dict[str, Any]] = node.client(  # type: ignore[assignment]
        None, "tcp-client", VIP, "80", "3", cgroup=node.outside
    )
    assert {r.get("error") for r in outside} == {"ENETUNREACH"}
