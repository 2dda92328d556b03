"""Per-socket datapath state goes when its socket does.

nm_revnat_v1 and nm_redir_v1 entries are deleted by cgroup/sock_release when
the socket's last fd closes (sockops deletes the reverse-NAT entry of a TCP
connect that fails after its SYN, whose peer port the kernel clears before
release); nm_origdst_v1 entries when the proxy's accepted socket reaches
TCP_CLOSE, never when the client's closes. The maps are read from the test
node's private pins, so nothing else writes to them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import pinned
from nodemesh.ebpf.mirrors import Mirror, ip_str, port_host
from tests.support.polling import wait_until

from .conftest import Datapath
from .node import MeshNode, Pod
from .plans import frontend, plan, redirect
from .test_datapath_envoy import envoy  # noqa: F401 (the real node Envoy fixture)

pytestmark = pytest.mark.privileged

VIP, UDP_VIP, DEAD_VIP, PROXY_PORT = "10.96.0.10", "10.96.0.53", "10.96.0.99", 15001
RELEASE_PROBE = Path(__file__).parent / "release_probe.py"


def _show(m: Mirror) -> str:
    parts = []
    for name, *_ in m._fields_:
        value = int(getattr(m, name))
        if name.endswith("addr_be"):
            parts.append(ip_str(value))
        elif name.endswith("port_be"):
            parts.append(str(port_host(value)))
        elif name != "pad":
            parts.append(str(value))
    return "/".join(parts)


def entries(datapath: Datapath, spec: pinned.MapSpec) -> list[str]:
    with pinned.open_map(datapath.config.maps_dir, spec) as m:
        return sorted(f"{_show(k)} -> {_show(v)}" for k, v in m.items().values())


def wait_empty(datapath: Datapath, *specs: pinned.MapSpec, timeout: float = 30.0) -> None:
    """Poll: a socket's release runs as its process exits, not before we hear of it."""

    def drained() -> bool:
        left = {s.name: entries(datapath, s) for s in specs}
        left = {name: e for name, e in left.items() if e}
        assert left == {}
        return True

    wait_until(drained, what="the maps emptied", timeout=timeout, retry_on=(AssertionError,))


def _results(node: MeshNode, pod: Pod, *args: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = node.client(pod, *args)  # type: ignore[assignment]
    return out


@pytest.fixture
def pods(node: MeshNode, datapath: Datapath) -> dict[str, Pod]:
    client, b1, dead = (node.add_pod("default", n) for n in ("client", "b1", "dead"))
    node.server(b1, "tcp-server", "8080", "b1")
    node.server(b1, "udp-server", "5353", "b1")
    tcp = frontend(VIP, 80, pb.TCP, [(b1.ip, 8080)], service="default/web")
    udp = frontend(UDP_VIP, 53, pb.UDP, [(b1.ip, 5353)], service="default/dns")
    # A backend pod with nothing listening: every SYN gets a reset.
    refused = frontend(DEAD_VIP, 80, pb.TCP, [(dead.ip, 8080)], service="default/dead")
    datapath.apply(plan(tcp, udp, refused))
    return {"client": client, "b1": b1}


def test_closed_tcp_and_connected_udp_sockets_leave_no_revnat(
    node: MeshNode, datapath: Datapath, pods: dict[str, Pod]
) -> None:
    client = pods["client"]
    hold = node.probe(client, "tcp-hold", VIP, "80")
    assert hold.stdout is not None and hold.stdin is not None
    assert json.loads(hold.stdout.readline())["backend"] == "b1"
    # The open connection's entry is there, and answers getpeername.
    assert [e.split(" -> ")[1] for e in entries(datapath, pinned.REVNAT)] == [f"{VIP}/80/0"]

    tcp = _results(node, client, "tcp-client", VIP, "80", "200")
    assert [r for r in tcp if "error" in r] == []
    assert {r["getpeername"] for r in tcp} == {f"{VIP}:80"}
    udp = _results(node, client, "udp-connected-client", UDP_VIP, "53", "50")
    assert [r for r in udp if "error" in r] == []
    assert {r["getpeername"] for r in udp} == {f"{UDP_VIP}:53"}
    assert {r["from"] for r in udp} == {f"{UDP_VIP}:53"}

    # Only the held connection is left; closing it empties the map.
    assert len(entries(datapath, pinned.REVNAT)) == 1
    hold.stdin.close()
    hold.wait(timeout=60)
    wait_empty(datapath, pinned.REVNAT)


def test_refused_connects_leave_nothing(
    node: MeshNode, datapath: Datapath, pods: dict[str, Pod]
) -> None:
    refused = _results(node, pods["client"], "tcp-client", DEAD_VIP, "80", "50")
    assert {r.get("error") for r in refused} == {"ECONNREFUSED"}
    wait_empty(datapath, pinned.REVNAT, pinned.REDIR)


def test_steered_connections_leave_nothing_once_the_proxy_closes(
    node: MeshNode, datapath: Datapath, pods: dict[str, Pod]
) -> None:
    client, b1 = pods["client"], pods["b1"]
    node.server(None, "origdst-server", str(PROXY_PORT), cgroup=node.proxy_cgroup)
    web = frontend(VIP, 80, pb.TCP, [(b1.ip, 8080)], service="default/web")
    datapath.apply(plan(web, redirects=(redirect(web, PROXY_PORT, ["default/client"]),)))

    steered = _results(node, client, "tcp-client", VIP, "80", "100")
    assert [r for r in steered if "error" in r] == []
    assert {r["backend"] for r in steered} == {"proxy"}
    assert {r["orig"] for r in steered} == {f"{VIP}:80"}
    assert {r["getpeername"] for r in steered} == {f"{VIP}:80"}
    wait_empty(datapath, pinned.REVNAT, pinned.REDIR, pinned.ORIGDST)


@pytest.mark.envoy
@pytest.mark.usefixtures("envoy")
def test_connections_through_the_real_envoy_leave_nothing(
    node: MeshNode, datapath: Datapath, pods: dict[str, Pod]
) -> None:
    client, b1 = pods["client"], pods["b1"]
    web = frontend(VIP, 80, pb.TCP, [(b1.ip, 8080)], service="default/web")
    datapath.apply(plan(web, redirects=(redirect(web, PROXY_PORT, ["default/client"]),)))

    steered = _results(node, client, "tcp-client", VIP, "80", "30")
    assert [r for r in steered if "error" in r] == []
    # Envoy reached b1 only because SO_ORIGINAL_DST answered with the VIP.
    assert {r["backend"] for r in steered} == {"b1"}
    assert client.ip not in {r["peer"].split(":")[0] for r in steered}
    assert {r["getpeername"] for r in steered} == {f"{VIP}:80"}
    # Envoy's own upstream sockets were translated too, and are closed with
    # the downstream ones.
    wait_empty(datapath, pinned.REVNAT, pinned.REDIR, pinned.ORIGDST)


def test_origdst_outlives_a_client_that_closes_before_the_proxy_accepts(
    node: MeshNode, datapath: Datapath, pods: dict[str, Pod]
) -> None:
    client, b1 = pods["client"], pods["b1"]
    argv = [sys.executable, str(RELEASE_PROBE), "lazy-proxy", str(PROXY_PORT)]
    proxy = node.spawn(argv, node.proxy_cgroup, node.netns)
    assert proxy.stdout is not None and proxy.stdin is not None
    assert proxy.stdout.readline().strip() == "ready"
    web = frontend(VIP, 80, pb.TCP, [(b1.ip, 8080)], service="default/web")
    datapath.apply(plan(web, redirects=(redirect(web, PROXY_PORT, ["default/client"]),)))

    sent = node.spawn(
        [sys.executable, str(RELEASE_PROBE), "send-close", VIP, "80", "20"],
        client.cgroup,
        client.netns,
    )
    out, _ = sent.communicate(timeout=120)
    assert json.loads(out) == {"count": 20, "errors": []}
    # Every client socket is gone, and so are its own entries...
    wait_empty(datapath, pinned.REVNAT, pinned.REDIR)
    # ...but the proxy has not asked yet, so its answers must still be there.
    assert len(entries(datapath, pinned.ORIGDST)) == 20

    proxy.stdin.write("accept\n")
    proxy.stdin.flush()
    assert json.loads(proxy.stdout.readline()) == [f"{VIP}:80"] * 20
    wait_empty(datapath, pinned.ORIGDST)


def test_a_steered_connect_that_never_sends_its_syn_leaves_no_redirect(
    node: MeshNode, datapath: Datapath, pods: dict[str, Pod]
) -> None:
    client, b1 = pods["client"], pods["b1"]
    web = frontend(VIP, 80, pb.TCP, [(b1.ip, 8080)], service="default/web")
    datapath.apply(plan(web, redirects=(redirect(web, PROXY_PORT, ["default/client"]),)))
    with IPRoute(netns=client.netns) as ipr:
        ipr.route("del", dst="0.0.0.0/0")  # the proxy address is now unreachable

    failed = _results(node, client, "tcp-client", VIP, "80", "10")
    assert {r.get("error") for r in failed} == {"ENETUNREACH"}
    wait_empty(datapath, pinned.REDIR)
