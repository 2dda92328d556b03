"""Sockets that touch no Service VIP cost the datapath almost nothing.

The kernel runs the mesh cgroup's programs for every socket, translated or
not: sockops about five times per TCP connection, the release program(s)
once per socket each. These tests pin down the work that is skipped:

- one release program serves AF_INET and AF_INET6 sockets (two attached
  programs were two runs per socket), and a load drops an older agent's
  second one;
- sockops at connect() looks at no map for a socket whose peer port no
  backend or proxy has, and for no redirect unless the peer port is a
  proxy's: a redirect filed under such a socket's cookie is left alone (it
  used to be moved to nm_origdst_v1);
- sockops on an accepted socket looks at no map unless it accepted on a
  proxy port: an nm_origdst_v1 entry that happens to match a pod server's
  connection is left alone (it used to be watched and deleted at close).

Costs themselves are measured by `python -m bench.policy` (bpf_stats), never
asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import libbpf, loader, pinned
from nodemesh.ebpf.mirrors import U8, U32, U64, OrigDst, OrigDstKey, ip_be, port_be
from tests.support.polling import wait_until

from .conftest import Datapath
from .node import NODE_IP, MeshNode, Pod
from .plans import frontend, plan, redirect

pytestmark = pytest.mark.privileged

VIP, BACKEND_PORT, PLAIN_PORT, PROXY_PORT = "10.96.0.10", 8080, 9000, 15001
SO_COOKIE = 57

# Prints the socket's cookie, connects when told (from port `bind` if not
# 0), reads the server's first line, closes, and prints that line.
COOKIE_CONNECT = f"""
import json, socket, struct, sys
host, port, bind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if bind:
    s.bind(("0.0.0.0", bind))
cookie = struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, {SO_COOKIE}, 8))[0]
print(json.dumps({{"cookie": cookie}}), flush=True)
sys.stdin.readline()
s.connect((host, port))
reply = s.recv(4096)
s.close()
print(json.dumps(json.loads(reply)), flush=True)
"""


def _connect_later(
    node: MeshNode, pod: Pod, host: str, port: int, bind: int = 0
) -> tuple[subprocess.Popen[str], int]:
    argv = [sys.executable, "-c", COOKIE_CONNECT, host, str(port), str(bind)]
    proc = node.spawn(argv, pod.cgroup, pod.netns)
    assert proc.stdout is not None
    return proc, int(json.loads(proc.stdout.readline())["cookie"])


def _go(proc: subprocess.Popen[str]) -> str:
    """Let the client connect; the name of the server that answered."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    backend = str(json.loads(proc.stdout.readline())["backend"])
    proc.wait(timeout=60)
    return backend


@pytest.fixture
def pods(node: MeshNode, datapath: Datapath) -> dict[str, Pod]:
    client, server = node.add_pod("default", "client"), node.add_pod("default", "server")
    for port in (BACKEND_PORT, PLAIN_PORT):
        node.server(server, "tcp-server", str(port), "server")
    # The server is a backend of the VIP on BACKEND_PORT; the VIP is steered
    # to a proxy port for the client: both ports are peer ports, PLAIN_PORT is not.
    node.server(None, "tcp-server", str(PROXY_PORT), "proxy", cgroup=node.proxy_cgroup)
    web = frontend(VIP, 80, pb.TCP, [(server.ip, BACKEND_PORT)], service="default/web")
    datapath.apply(plan(web, redirects=(redirect(web, PROXY_PORT, ["default/client"]),)))
    return {"client": client, "server": server}


def _attached(cgroup: Path, attach_type: str) -> list[str]:
    res = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True, text=True, check=True
    )
    attached = json.loads(res.stdout or "[]")
    return sorted(str(e["name"]) for e in attached if e.get("attach_type") == attach_type)


def test_one_release_program_serves_both_families(node: MeshNode, datapath: Datapath) -> None:
    datapath.load()
    assert _attached(node.mesh, "cgroup_inet_sock_release") == ["nm_sock_release"]
    # An older agent's second release program, pinned under its old name
    # (any program will do: only the pin's name says it is retired).
    config = datapath.config
    lib = libbpf.lib()
    prog = libbpf.check(lib.bpf_obj_get(str(config.progs_dir / loader.PROXY_PROGRAM).encode()), "p")
    cg = os.open(node.mesh, os.O_RDONLY | os.O_DIRECTORY)
    try:
        link = libbpf.check(lib.bpf_link_create(prog, cg, loader.BPF_CGROUP_GETSOCKOPT, None), "l")
        retired = config.links_dir / "nm_sock_release6"
        libbpf.check(lib.bpf_obj_pin(link, str(retired).encode()), "pin")
        os.close(link)
    finally:
        os.close(cg)
        os.close(prog)
    assert _attached(node.mesh, "cgroup_getsockopt") == [loader.PROXY_PROGRAM]
    datapath.load()
    assert not retired.exists()
    assert _attached(node.mesh, "cgroup_getsockopt") == []


@pytest.mark.parametrize("port", [PLAIN_PORT, BACKEND_PORT])
def test_connect_off_the_proxy_ports_files_no_original_destination(
    node: MeshNode, datapath: Datapath, pods: dict[str, Pod], port: int
) -> None:
    """PLAIN_PORT: no backend or proxy has it, sockops looks nothing up;
    BACKEND_PORT (straight to the pod, no VIP): only a proxy port's
    connect can have been steered, so no redirect is looked for."""
    client, server = pods["client"], pods["server"]
    proc, cookie = _connect_later(node, client, server.ip, port)
    # A redirect under this socket's cookie, as if connect() had steered it:
    # sockops would file it under the 4-tuple Envoy sees and drop it here.
    planted = OrigDst(addr_be=ip_be(VIP), port_be=port_be(80), proxy_port_be=port_be(PROXY_PORT))
    with pinned.open_map(datapath.config.maps_dir, pinned.REDIR) as redir:
        redir.update(U64(cookie), planted)
        assert _go(proc) == "server"
        # connect() returned, so TCP_CONNECT_CB has run: nothing moved.
        left = redir.lookup(U64(cookie))
        redir.delete(U64(cookie))
    assert left is not None and left.as_tuple() == planted.as_tuple()
    with pinned.open_map(datapath.config.maps_dir, pinned.ORIGDST) as origdst:
        assert [k.as_tuple() for k in origdst.iter_keys()] == []


def test_accepted_socket_off_the_proxy_ports_gets_no_sockops_lookup(
    node: MeshNode, datapath: Datapath, pods: dict[str, Pod]
) -> None:
    client, server = pods["client"], pods["server"]
    bystander = _origdst_key(client.ip, 40001, PLAIN_PORT)
    control = _origdst_key(client.ip, 40002, PROXY_PORT)
    entry = OrigDst(addr_be=ip_be(VIP), port_be=port_be(80))
    maps = datapath.config.maps_dir
    with pinned.open_map(maps, pinned.ORIGDST) as origdst:
        origdst.update(bystander, entry)
        origdst.update(control, entry)
    # A pod server's connection whose 4-tuple matches the entry...
    proc, _ = _connect_later(node, client, server.ip, PLAIN_PORT, bind=40001)
    assert _go(proc) == "server"
    # ...then one to the proxy port (straight to it, not through the VIP),
    # whose entry the proxy's side deletes when its socket closes.
    proc, _ = _connect_later(node, client, NODE_IP, PROXY_PORT, bind=40002)
    assert _go(proc) == "proxy"

    def control_gone() -> bool:
        with pinned.open_map(maps, pinned.ORIGDST) as m:
            return m.lookup(control) is None

    wait_until(control_gone, what="the proxy-side entry deleted at TCP_CLOSE", timeout=30)
    with pinned.open_map(maps, pinned.ORIGDST) as origdst:
        assert origdst.lookup(bystander) is not None, "a pod server's socket was watched"
        origdst.delete(bystander)


def test_load_marks_an_older_agents_proxy_ports(
    node: MeshNode, datapath: Datapath, pods: dict[str, Pod]
) -> None:
    """An older agent marked every peer port 1; sockops now wants the proxy
    bit before it files a steered connection, so a load adds it at once."""
    maps = datapath.config.maps_dir
    with pinned.open_map(maps, pinned.PEER_PORTS) as ports:
        ports.update(U32(PROXY_PORT), U8(1))
    datapath.load()
    with pinned.open_map(maps, pinned.PEER_PORTS) as ports:
        marks = {p: ports.lookup(U32(p)) for p in (PROXY_PORT, BACKEND_PORT)}
    assert {p: m.as_tuple()[0] if m else 0 for p, m in marks.items()} == {
        PROXY_PORT: 3,
        BACKEND_PORT: 1,
    }


def _origdst_key(client_ip: str, client_port: int, local_port: int) -> OrigDstKey:
    return OrigDstKey(
        client_addr_be=ip_be(client_ip),
        client_port_be=port_be(client_port),
        proxy_port_be=port_be(local_port),
    )
