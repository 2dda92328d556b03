"""IPv6 Service VIPs translated in the kernel (connect6/sendmsg6), and IPv4
VIPs reached from dual-stack sockets as ::ffff:a.b.c.d.

Addresses are ULAs inside the node's own namespaces (no uplink)."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, dump, pinned
from nodemesh.ebpf.errors import PlanTooLarge
from tests.support.polling import wait_until

from .conftest import Datapath
from .node import NODE_IP, MeshNode
from .node6 import PROBE6, add_ipv6, client6, enable_forwarding, server6
from .plans import frontend, plan, redirect

pytestmark = pytest.mark.privileged

VIP6, EMPTY6, VIP4 = "fd00:96::10", "fd00:96::30", "10.96.0.10"


def _revnat6(datapath: Datapath) -> int:
    with pinned.open_map(datapath.config.maps_dir, pinned.REVNAT6) as m:
        return sum(1 for _ in m.iter_keys())


def _wait_revnat6_empty(datapath: Datapath) -> None:
    wait_until(lambda: _revnat6(datapath) == 0, what="revnat6 entries released", interval=0.1)


def test_ipv6_tcp_and_udp_translated_in_kernel(node: MeshNode, datapath: Datapath) -> None:
    enable_forwarding(node)
    client, b1, b2 = (node.add_pod("default", n) for n in ("client", "b1", "b2"))
    cip = add_ipv6(node, client)
    ips = {b.name: add_ipv6(node, b) for b in (b1, b2)}
    for b in (b1, b2):
        server6(node, b, "tcp-server", "8080", b.name)
        server6(node, b, "udp-server", "5353", b.name)
    tcp_backends = [(ips["b1"], 8080), (ips["b2"], 8080)]
    udp_backends = [(ips["b1"], 5353), (ips["b2"], 5353)]
    datapath.apply(
        plan(
            frontend(VIP6, 80, pb.TCP, tcp_backends),
            frontend(VIP6, 53, pb.UDP, udp_backends),
            frontend(EMPTY6, 80, pb.TCP, []),
            frontend(EMPTY6, 53, pb.UDP, []),
        )
    )

    tcp = client6(node, client, "tcp-client", VIP6, "80", "40")
    assert [r for r in tcp if "error" in r] == []
    assert {r["backend"] for r in tcp} == {"b1", "b2"}
    assert {r["peer"].rsplit(":", 1)[0] for r in tcp} == {f"[{cip}]"}
    assert {r["getpeername"] for r in tcp} == {f"[{VIP6}]:80"}
    # Every TCP socket closed: the release hook emptied nm_revnat6_v1.
    _wait_revnat6_empty(datapath)

    connected = client6(node, client, "udp-connected-client", VIP6, "53", "40")
    assert [r for r in connected if "error" in r] == []
    assert {r["backend"] for r in connected} == {"b1", "b2"}
    assert {r["from"] for r in connected} == {f"[{VIP6}]:53"}
    assert {r["getpeername"] for r in connected} == {f"[{VIP6}]:53"}
    _wait_revnat6_empty(datapath)

    udp = client6(node, client, "udp-client", VIP6, "53", "40")
    assert [r for r in udp if "error" in r] == []
    assert {r["backend"] for r in udp} == {"b1", "b2"}
    assert {r["peer"].rsplit(":", 1)[0] for r in udp} == {f"[{cip}]"}
    assert {r["from"] for r in udp} == {f"[{VIP6}]:53"}

    # Zero backends: refused by the hook, for TCP and for UDP.
    refused = client6(node, client, "tcp-client", EMPTY6, "80", "3")
    assert {r.get("error") for r in refused} == {"ECONNREFUSED"}
    refused_udp = client6(node, client, "udp-client", EMPTY6, "53", "3")
    assert {r.get("error") for r in refused_udp} == {"ECONNREFUSED"}

    # Not a VIP: a pod's own IPv6 address and port, reached as addressed.
    direct = client6(node, client, "tcp-client", ips["b1"], "8080", "3")
    assert {r.get("backend") for r in direct} == {"b1"}
    assert {r["getpeername"] for r in direct} == {f"[{ips['b1']}]:8080"}

    text = dump.render(
        plan(frontend(VIP6, 80, pb.TCP, tcp_backends)),
        datapath.config.maps_dir,
        NODE_IP,
        datapath.pods,
    )
    assert f"[{VIP6}]:80/TCP" in text and "in sync" in text
    assert f"[{EMPTY6}]:53/UDP" in text and "STALE" in text
    assert "nm_services6_v1" in text


def test_ipv4_mapped_vip_from_dual_stack_socket(node: MeshNode, datapath: Datapath) -> None:
    client, b1, b2 = (node.add_pod("default", n) for n in ("client", "b1", "b2"))
    for b in (b1, b2):
        node.server(b, "tcp-server", "8080", b.name)
        node.server(b, "udp-server", "5353", b.name)
    datapath.apply(
        plan(
            frontend(VIP4, 80, pb.TCP, [(b1.ip, 8080), (b2.ip, 8080)]),
            frontend(VIP4, 53, pb.UDP, [(b1.ip, 5353), (b2.ip, 5353)]),
            frontend("10.96.0.30", 80, pb.TCP, []),
        )
    )
    mapped = f"::ffff:{VIP4}"

    tcp = client6(node, client, "tcp-client", mapped, "80", "40")
    assert [r for r in tcp if "error" in r] == []
    assert {r["backend"] for r in tcp} == {"b1", "b2"}
    # The IPv4 servers see the pod's IPv4 address; the app sees the mapped VIP.
    assert {r["peer"].split(":")[0] for r in tcp} == {client.ip}
    assert {r["getpeername"] for r in tcp} == {f"[{mapped}]:80"}
    _wait_revnat6_empty(datapath)

    for mode in ("udp-connected-client", "udp-client"):
        udp = client6(node, client, mode, mapped, "53", "20")
        assert [r for r in udp if "error" in r] == [], mode
        assert {r["backend"] for r in udp} == {"b1", "b2"}, mode
        assert {r["from"] for r in udp} == {f"[{mapped}]:53"}, mode

    refused = client6(node, client, "tcp-client", "::ffff:10.96.0.30", "80", "3")
    assert {r.get("error") for r in refused} == {"ECONNREFUSED"}


def test_overflowing_ipv6_plan_writes_nothing(node: MeshNode, datapath: Datapath) -> None:
    small = plan(frontend(VIP6, 80, pb.TCP, [("fd00:10:0:1::2", 8080)]))
    datapath.apply(small)

    def pinned_state() -> dict[tuple[int, ...], tuple[int, ...]]:
        out: dict[tuple[int, ...], tuple[int, ...]] = {}
        for spec in (pinned.SERVICES, pinned.SERVICES6):
            with pinned.open_map(datapath.config.maps_dir, spec) as m:
                out |= {k: v.as_tuple() for k, (_, v) in m.items().items()}
        return out

    before = pinned_state()
    many = [(f"fd00:128::{i:x}", 8080) for i in range(1, applier.MAX_BACKENDS + 1)]
    huge = plan(
        frontend("10.96.0.11", 80, pb.TCP, [("10.0.1.2", 8080)]),
        frontend("fd00:96::11", 80, pb.TCP, many),
        frontend("fd00:96::12", 80, pb.TCP, many[:10]),
    )
    with pytest.raises(PlanTooLarge, match="nm_services6_v1 would need"):
        datapath.apply(huge)
    assert pinned_state() == before


def test_ipv4_mapped_connect_is_steered_like_connect4(node: MeshNode, datapath: Datapath) -> None:
    """A dual-stack client of an L7-policied IPv4 VIP goes to Envoy too (no
    bypass through ::ffff:), and Envoy's SO_ORIGINAL_DST answers it."""
    curl, other, b1 = (node.add_pod("default", n) for n in ("curl", "other", "b1"))
    node.server(b1, "tcp-server", "8080", "b1")
    node.server(None, "origdst-server", "15001", cgroup=node.proxy_cgroup)
    httpbin = frontend(VIP4, 80, pb.TCP, [(b1.ip, 8080)], service="default/httpbin")
    datapath.apply(plan(httpbin, redirects=(redirect(httpbin, 15001, ["default/curl"]),)))
    mapped = f"::ffff:{VIP4}"

    steered = client6(node, curl, "tcp-client", mapped, "80", "10")
    assert [r for r in steered if "error" in r] == []
    assert {r["backend"] for r in steered} == {"proxy"}
    assert {r["orig"] for r in steered} == {f"{VIP4}:80"}
    assert {r["peer"].split(":")[0] for r in steered} == {curl.ip}
    assert {r["getpeername"] for r in steered} == {f"[{mapped}]:80"}

    direct = client6(node, other, "tcp-client", mapped, "80", "10")
    assert {r.get("backend") for r in direct} == {"b1"}


def test_ipv6_scope_is_the_mesh_cgroup(node: MeshNode, datapath: Datapath) -> None:
    """A host-network process in the mesh cgroup is translated; one outside
    it is untouched (the node has no route to the VIP range: ENETUNREACH,
    nothing leaves)."""
    b1 = node.add_pod("default", "b1")
    b1_ip = add_ipv6(node, b1)
    server6(node, b1, "tcp-server", "8080", "b1")
    datapath.apply(plan(frontend(VIP6, 80, pb.TCP, [(b1_ip, 8080)])))
    hostnet = node.mesh / "hostnet"
    hostnet.mkdir()
    for cgroup, want in ((hostnet, {"backend": "b1"}), (node.outside, {"error": "ENETUNREACH"})):
        out = node.spawn(
            [sys.executable, str(PROBE6), "tcp-client", VIP6, "80", "3"], cgroup, node.netns
        ).communicate(timeout=120)[0]
        results: list[dict[str, Any]] = json.loads(out)
        assert [{k: r.get(k) for k in want} for r in results] == [want] * 3, cgroup.name
