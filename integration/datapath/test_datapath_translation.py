"""Scenario 1: Service VIPs are translated in the kernel, for TCP and UDP.

A pod connecting to a VIP reaches every backend; each backend sees the pod's
own IP (no proxy in between), and the pod sees the VIP as its peer.
"""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb

from .conftest import Datapath
from .node import MeshNode
from .plans import frontend

pytestmark = pytest.mark.privileged

VIP = "10.96.0.10"


def test_tcp_and_udp_translated_in_kernel(node: MeshNode, datapath: Datapath) -> None:
    client = node.add_pod("default", "client")
    b1, b2 = node.add_pod("default", "b1"), node.add_pod("default", "b2")
    for b in (b1, b2):
        node.server(b, "tcp-server", "8080", b.name)
        node.server(b, "udp-server", "5353", b.name)
    backends_tcp = [(b1.ip, 8080), (b2.ip, 8080)]
    backends_udp = [(b1.ip, 5353), (b2.ip, 5353)]
    datapath.apply(
        pb.DatapathPlan(
            model_version="test",
            frontends=[
                frontend(VIP, 80, pb.TCP, backends_tcp),
                frontend(VIP, 53, pb.UDP, backends_udp),
            ],
        )
    )

    tcp: list[dict[str, Any]] = node.client(client, "tcp-client", VIP, "80", "40")  # type: ignore[assignment]
    assert [r for r in tcp if "error" in r] == []
    assert {r["backend"] for r in tcp} == {"b1", "b2"}
    assert {r["peer"].split(":")[0] for r in tcp} == {client.ip}
    assert {r["getpeername"] for r in tcp} == {f"{VIP}:80"}

    udp: list[dict[str, Any]] = node.client(client, "udp-client", VIP, "53", "40")  # type: ignore[assignment]
    assert [r for r in udp if "error" in r] == []
    assert {r["backend"] for r in udp} == {"b1", "b2"}
    assert {r["peer"].split(":")[0] for r in udp} == {client.ip}
    assert {r["from"] for r in udp} == {f"{VIP}:53"}

    connected: list[dict[str, Any]] = node.client(  # type: ignore[assignment]
        client, "udp-connected-client", VIP, "53", "40"
    )
    assert [r for r in connected if "error" in r] == []
    assert {r["backend"] for r in connected} == {"b1", "b2"}
    assert {r["from"] for r in connected} == {f"{VIP}:53"}
    assert {r["getpeername"] for r in connected} == {f"{VIP}:53"}
