"""CiliumNetworkPolicy L3/L4 in the kernel: entities, CIDRs with exceptions
(external addresses live in a netns this test makes), deny over allow,
policy on the real peer after Service translation, L4 before L7 steering,
and the verdict events and counters that report each decision."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from pyroute2 import IPRoute, netns

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import events, pinned, policy_apply
from nodemesh.ebpf.events import DecodedEvent, Direction, EventType, Verdict
from nodemesh.ebpf.mirrors import U32, PolicyStats

from .conftest import Datapath
from .node import MeshNode, Pod
from .plans import frontend, plan, redirect
from .policy_world import PROBE, PolicyWorld

pytestmark = pytest.mark.privileged

EXT_IN, EXT_HOLE, EXT_OTHER = "192.0.2.10", "192.0.2.200", "198.51.100.10"
VIP_DB, VIP_API, PROXY_PORT = "10.96.0.50", "10.96.0.51", 15001


def cnp(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def add_external(node: MeshNode) -> None:
    """A netns standing for the outside world, routed from the node: it
    answers TCP 80 on 192.0.2.10, 192.0.2.200 and 198.51.100.10."""
    name = f"nm{node.tag}x"
    node.pods["ext/world"] = Pod(
        "ext", "world", EXT_IN, name, node.outside
    )  # torn down with the node
    netns.create(name)
    host_if, ext_if = f"nm{node.tag}xh", f"nm{node.tag}xc"
    with IPRoute(netns=node.netns) as ipr:
        ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": ext_if})
        ipr.link("set", index=ipr.link_lookup(ifname=ext_if)[0], net_ns_fd=f"/var/run/netns/{name}")
        host = ipr.link_lookup(ifname=host_if)[0]
        ipr.addr("add", index=host, address="192.0.2.1", prefixlen=24)
        ipr.link("set", index=host, state="up")
        ipr.route("add", dst="198.51.100.0/24", gateway=EXT_IN)
    with IPRoute(netns=name) as ipr:
        dev = ipr.link_lookup(ifname=ext_if)[0]
        for ifname in ("lo", ext_if):
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        for address in (EXT_IN, EXT_HOLE):
            ipr.addr("add", index=dev, address=address, prefixlen=24)
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=EXT_OTHER, prefixlen=32)
        ipr.route("add", dst="0.0.0.0/0", gateway="192.0.2.1")
    proc = node.spawn([sys.executable, str(PROBE), "serve", "world", "80", ""], node.outside, name)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"


@pytest.fixture
def world(node: MeshNode, datapath: Datapath) -> PolicyWorld:
    w = PolicyWorld(node)
    w.build()
    return w


def test_entities_external_cidrs_and_deny_wins(node: MeshNode, world: PolicyWorld) -> None:
    add_external(node)
    tool = world.pod("dev/tool")
    targets = [
        (EXT_IN, 80, "tcp"),
        (EXT_HOLE, 80, "tcp"),
        (EXT_OTHER, 80, "tcp"),
        (world.pod("prod/api").ip, 8080, "tcp"),
        (world.pod("prod/db").ip, 8080, "tcp"),
    ]
    # Negative control: nothing selects tool, everything answers.
    assert world.try_from(tool, targets) == ["ok"] * 5
    world.set_policies(
        cnp(
            "tool-out",
            "dev",
            {
                "endpointSelector": {"matchLabels": {"app": "tool"}},
                "egress": [
                    {"toCIDRSet": [{"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}]},
                    {"toEntities": ["cluster"]},
                ],
                "egressDeny": [
                    {
                        "toEndpoints": [
                            {
                                "matchLabels": {
                                    "app": "db",
                                    "k8s:io.kubernetes.pod.namespace": "prod",
                                }
                            }
                        ]
                    }
                ],
            },
        )
    )
    assert world.try_from(tool, targets) == ["ok", "EPERM", "EPERM", "ok", "EPERM"]
    # Other pods are untouched.
    assert world.try_from(world.pod("dev/api"), targets) == ["ok"] * 5


def read_events(maps_dir: Any) -> list[DecodedEvent]:
    got: list[DecodedEvent] = []
    with events.Reader(maps_dir, got.append) as reader:
        reader.poll(0)
    return got


def counters(maps_dir: Any, policy_id: int) -> tuple[int, int]:
    with pinned.open_map(maps_dir, pinned.POLICY_STATS) as m:
        per_cpu = events.read_percpu(m.fd, U32(policy_id), PolicyStats)
    return sum(v.as_tuple()[0] for v in per_cpu), sum(v.as_tuple()[1] for v in per_cpu)


def test_policy_judges_the_backend_and_reports_verdicts(
    node: MeshNode, datapath: Datapath, world: PolicyWorld
) -> None:
    tool, api, db, web = (world.pod(k) for k in ("dev/tool", "prod/api", "prod/db", "prod/web-1"))
    datapath.apply(
        plan(
            frontend(VIP_DB, 80, pb.TCP, [(db.ip, 8080)], service="prod/db"),
            frontend(VIP_API, 80, pb.TCP, [(api.ip, 8080)], service="prod/api"),
        )
    )
    maps = node.config().maps_dir
    assert world.try_from(tool, [(VIP_DB, 80, "tcp"), (VIP_API, 80, "tcp")]) == ["ok", "ok"]
    world.set_policies(
        cnp(
            "tool-to-api",
            "dev",
            {
                "endpointSelector": {"matchLabels": {"app": "tool"}},
                "egress": [
                    {
                        "toEndpoints": [
                            {
                                "matchLabels": {
                                    "app": "api",
                                    "k8s:io.kubernetes.pod.namespace": "prod",
                                }
                            }
                        ]
                    }
                ],
            },
        ),
        cnp(
            "db-closed",
            "prod",
            {"endpointSelector": {"matchLabels": {"app": "db"}}, "ingress": [{}]},
        ),
    )
    assert world.last_plan is not None
    ids = {e.pod: e.identity for e in world.last_plan.endpoints.values()}
    pid = world.last_plan.policy_names.index("CiliumNetworkPolicy dev/tool-to-api")
    read_events(maps)  # drain
    # The VIP is judged as its backend: db is not allowed, api is.
    assert world.try_from(tool, [(VIP_DB, 80, "tcp"), (VIP_API, 80, "tcp")]) == ["EPERM", "ok"]
    (denied,) = read_events(maps)  # allowed verdicts are not reported by default
    assert (denied.type, denied.direction, denied.verdict) == (
        EventType.POLICY,
        Direction.EGRESS,
        Verdict.DENIED,
    )
    assert (denied.daddr, denied.dport, denied.orig_daddr, denied.orig_dport) == (
        db.ip,
        8080,
        VIP_DB,
        80,
    )
    assert (denied.src_identity, denied.dst_identity, denied.policy_id) == (
        ids["dev/tool"],
        ids["prod/db"],
        0,
    )
    assert denied.proto == 6 and denied.cgroup_id == node.pods["dev/tool"].cgroup.stat().st_ino

    policy_apply.set_events_allowed(maps, True)
    allowed_before = counters(maps, pid)[0]
    assert world.try_from(tool, [(VIP_API, 80, "tcp")]) == ["ok"]
    (allowed,) = read_events(maps)
    assert (allowed.verdict, allowed.policy_id, allowed.dst_identity) == (
        Verdict.ALLOWED,
        pid,
        ids["prod/api"],
    )
    assert counters(maps, pid)[0] == allowed_before + 1

    # Ingress: web's SYN never reaches db; the event has the whole 5-tuple.
    policy_apply.set_events_allowed(maps, False)
    assert world.try_from(web, [(db.ip, 8080, "tcp")]) == ["timeout"]
    ingress = [e for e in read_events(maps) if e.direction == Direction.INGRESS]
    assert ingress and {(e.saddr, e.daddr, e.dport) for e in ingress} == {(web.ip, db.ip, 8080)}
    assert all(e.sport > 0 and e.src_identity == ids["prod/web-1"] for e in ingress)
    assert events.lost(maps) == 0


def test_steered_connection_is_judged_at_l4_first(
    node: MeshNode, datapath: Datapath, world: PolicyWorld
) -> None:
    tool, api, db = (world.pod(k) for k in ("dev/tool", "prod/api", "prod/db"))
    node.server(None, "origdst-server", str(PROXY_PORT), cgroup=node.proxy_cgroup)
    fe = frontend(VIP_DB, 80, pb.TCP, [(db.ip, 8080)], service="prod/db")
    datapath.apply(plan(fe, redirects=(redirect(fe, PROXY_PORT, clients=None),)))
    steered = world.try_from(tool, [(VIP_DB, 80, "tcp")])
    assert steered == ["ok"]  # negative control: steered to the stand-in proxy
    world.set_policies(
        cnp(
            "db-from-api",
            "prod",
            {
                "endpointSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "api"}}]}],
            },
        )
    )
    # tool may not reach db, so it is not steered either: EPERM at connect().
    assert world.try_from(tool, [(VIP_DB, 80, "tcp")]) == ["EPERM"]
    assert world.try_from(api, [(VIP_DB, 80, "tcp")]) == ["ok"]
