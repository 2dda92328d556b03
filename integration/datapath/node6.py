"""IPv6 on a test node's pods: ULA addresses only, inside the node's own
namespaces (no uplink), DAD off so addresses are usable at once.

    pod I: eth0 = fd00:10:0:I::2/64, default route via fd00:10:0:I::1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from .node import MeshNode, Pod, sysctl_in

PROBE6 = Path(__file__).parent / "probe6.py"
IFA_F_NODAD = 0x02


def enable_forwarding(node: MeshNode) -> None:
    sysctl_in(node.netns, "net.ipv6.conf.all.forwarding", "1")


def add_ipv6(node: MeshNode, pod: Pod) -> str:
    """Give `pod` an IPv6 address and route; returns the address."""
    index = list(node.pods).index(pod.key) + 1
    host_if, pod_if = f"nm{node.tag}h{index}", f"nm{node.tag}c{index}"
    prefix = f"fd00:10:0:{index}::"
    with IPRoute(netns=node.netns) as ipr:
        dev = ipr.link_lookup(ifname=host_if)[0]
        ipr.addr("add", index=dev, address=f"{prefix}1", prefixlen=64, flags=IFA_F_NODAD)
    with IPRoute(netns=pod.netns) as ipr:
        dev = ipr.link_lookup(ifname=pod_if)[0]
        ipr.addr("add", index=dev, address=f"{prefix}2", prefixlen=64, flags=IFA_F_NODAD)
        ipr.route("add", dst="::/0", gateway=f"{prefix}1", family=10)
    return f"{prefix}2"


def server6(node: MeshNode, pod: Pod, *args: str) -> None:
    proc = node.spawn([sys.executable, str(PROBE6), *args], pod.cgroup, pod.netns)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", f"server {args} did not start: {line!r}"


def client6(node: MeshNode, pod: Pod, *args: str) -> list[dict[str, Any]]:
    proc = node.spawn([sys.executable, str(PROBE6), *args], pod.cgroup, pod.netns)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"client {args} failed"
    result: list[dict[str, Any]] = json.loads(out)
    return result
