"""Scenarios 2 (kernel half) and 3: selective L7 steering and live changes.

A stand-in proxy (probe.py origdst-server) runs in the proxy cgroup of the
node namespace, as the node Envoy would, and reports what SO_ORIGINAL_DST
returns for each connection it accepts. The real Envoy version of this is in
test_datapath_envoy.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb

from .conftest import Datapath
from .node import MeshNode, Pod
from .plans import frontend, plan, redirect

pytestmark = pytest.mark.privileged

VIP, OTHER_VIP, PROXY_PORT = "10.96.0.10", "10.96.0.20", 15001


def _connects(node: MeshNode, pod: Pod, vip: str, n: int = 10) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = node.client(pod, "tcp-client", vip, "80", str(n))  # type: ignore[assignment]
    assert [r for r in out if "error" in r] == []
    return out


def _ping(hold: Any) -> dict[str, Any]:
    hold.stdin.write("ping\n")
    hold.stdin.flush()
    reply: dict[str, Any] = json.loads(hold.stdout.readline())
    return reply


@pytest.fixture
def world(node: MeshNode, datapath: Datapath) -> dict[str, Any]:
    curl, other, b1 = (node.add_pod("default", n) for n in ("curl", "other", "b1"))
    node.server(b1, "tcp-server", "8080", "b1")
    node.server(None, "origdst-server", str(PROXY_PORT), cgroup=node.proxy_cgroup)
    httpbin = frontend(VIP, 80, pb.TCP, [(b1.ip, 8080)], service="default/httpbin")
    second = frontend(OTHER_VIP, 80, pb.TCP, [(b1.ip, 8080)], service="default/other")
    return {"curl": curl, "other": other, "httpbin": httpbin, "second": second}


def test_only_selected_pod_is_steered_and_proxy_learns_original_dst(
    node: MeshNode, datapath: Datapath, world: dict[str, Any]
) -> None:
    curl, other = world["curl"], world["other"]
    steer = redirect(world["httpbin"], PROXY_PORT, clients=["default/curl"])
    datapath.apply(plan(world["httpbin"], world["second"], redirects=(steer,)))

    steered = _connects(node, curl, VIP)
    assert {r["backend"] for r in steered} == {"proxy"}
    assert {r["orig"] for r in steered} == {f"{VIP}:80"}
    assert {r["peer"].split(":")[0] for r in steered} == {curl.ip}
    assert {r["getpeername"] for r in steered} == {f"{VIP}:80"}

    direct = _connects(node, other, VIP)
    assert {r["backend"] for r in direct} == {"b1"}
    assert {r["peer"].split(":")[0] for r in direct} == {other.ip}

    # The curl pod's connections to another service stay in the kernel.
    elsewhere = _connects(node, curl, OTHER_VIP)
    assert {r["backend"] for r in elsewhere} == {"b1"}
    assert {r["getpeername"] for r in elsewhere} == {f"{OTHER_VIP}:80"}


def test_all_clients_redirect_steers_every_pod_but_never_the_proxy(
    node: MeshNode, datapath: Datapath, world: dict[str, Any]
) -> None:
    steer = redirect(world["httpbin"], PROXY_PORT, clients=None)
    datapath.apply(plan(world["httpbin"], redirects=(steer,)))
    for pod in (world["curl"], world["other"]):
        assert {r["backend"] for r in _connects(node, pod, VIP)} == {"proxy"}
    # A process in the proxy's own cgroup is translated, never steered (no loop).
    from_proxy: list[dict[str, Any]] = node.client(  # type: ignore[assignment]
        None, "tcp-client", VIP, "80", "5", cgroup=node.proxy_cgroup
    )
    assert {r.get("backend") for r in from_proxy} == {"b1"}


def test_policy_changes_affect_new_connections_only(
    node: MeshNode, datapath: Datapath, world: dict[str, Any]
) -> None:
    curl = world["curl"]
    without = plan(world["httpbin"])
    with_policy = plan(
        world["httpbin"], redirects=(redirect(world["httpbin"], PROXY_PORT, ["default/curl"]),)
    )
    datapath.apply(without)
    direct_hold = node.probe(curl, "tcp-hold", VIP, "80")
    assert json.loads(direct_hold.stdout.readline())["backend"] == "b1"  # type: ignore[union-attr]

    datapath.apply(with_policy)
    assert {r["backend"] for r in _connects(node, curl, VIP)} == {"proxy"}
    steered_hold = node.probe(curl, "tcp-hold", VIP, "80")
    assert json.loads(steered_hold.stdout.readline())["backend"] == "proxy"  # type: ignore[union-attr]
    assert _ping(direct_hold)["backend"] == "b1"

    datapath.apply(without)
    assert {r["backend"] for r in _connects(node, curl, VIP)} == {"b1"}
    assert _ping(direct_hold)["backend"] == "b1"
    assert _ping(steered_hold)["backend"] == "proxy"
