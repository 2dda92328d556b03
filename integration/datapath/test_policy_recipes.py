"""The well-known NetworkPolicy recipes, enforced in the kernel, each with a
negative control (the same traffic without the policy, or the traffic the
policy does not cover)."""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh.ebpf import dump_policy

from .conftest import Datapath
from .node import MeshNode
from .policy_world import PolicyWorld

pytestmark = pytest.mark.privileged


def knp(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


@pytest.fixture
def world(node: MeshNode, datapath: Datapath) -> PolicyWorld:
    w = PolicyWorld(node)
    w.build()
    return w


def into(out: dict[tuple[str, str, int, str], str], server: str) -> dict[tuple[str, int, str], str]:
    return {(c, port, kind): v for (c, s, port, kind), v in out.items() if s == server}


def test_deny_all_ingress_then_allow_from_one_app(world: PolicyWorld) -> None:
    before = world.matrix()
    # Negative control: without policy every pair connects, TCP and UDP.
    assert set(before.values()) == {"ok"}

    world.set_policies(knp("deny-all", "prod", {"podSelector": {}}))
    out = world.matrix([world.pod("prod/api"), world.pod("dev/tool"), world.pod("ops/mon")])
    for (client, server, _port, _kind), got in out.items():
        want = "timeout" if server.startswith("prod/") else "ok"
        assert got == want, (client, server, got)
    # `agent dump`'s endpoint list: what the kernel holds, beside the plan.
    text = dump_policy.render(world.last_plan, world.node.config().maps_dir, world.cgroups)
    rows = {line.split()[0]: line.split() for line in text.splitlines() if "/" in line.split()[0]}
    assert rows["prod/db"][2:5] == ["Enabled", "Disabled", "1"] and "in sync" in " ".join(
        rows["prod/db"]
    )
    assert rows["dev/tool"][2:5] == ["Disabled", "Disabled", "0"]
    denied = next(line for line in text.splitlines() if line.startswith("default-deny"))
    assert int(denied.split()[2]) > 0  # the drops above, counted

    # Allow prod/db from app=api (same namespace only), TCP 8080 only.
    world.set_policies(
        knp("deny-all", "prod", {"podSelector": {}}),
        knp(
            "db-from-api",
            "prod",
            {
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"app": "api"}}}],
                        "ports": [{"port": "alt"}],
                    }
                ],
            },
        ),
    )
    db = into(
        world.matrix([world.pod("prod/api"), world.pod("dev/api"), world.pod("prod/web-1")]),
        "prod/db",
    )
    assert db[("prod/api", 8080, "tcp")] == "ok"
    assert db[("prod/api", 80, "tcp")] == "timeout"  # port not allowed
    assert db[("prod/api", 53, "udp")] == "timeout"
    assert db[("dev/api", 8080, "tcp")] == "timeout"  # same app, other namespace
    assert db[("prod/web-1", 8080, "tcp")] == "timeout"  # other app


def test_allow_from_a_namespace(world: PolicyWorld) -> None:
    world.set_policies(
        knp(
            "from-ops",
            "prod",
            {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "ops"}}}]}],
            },
        )
    )
    out = world.matrix([world.pod("ops/mon"), world.pod("dev/web"), world.pod("prod/api")])
    for (client, server, port, kind), got in out.items():
        enforced = server in ("prod/web-1", "prod/web-2")
        want = "ok" if not enforced or client.startswith("ops/") else "timeout"
        assert got == want, (client, server, port, kind, got)


def test_deny_egress_except_dns(world: PolicyWorld) -> None:
    world.set_policies(
        knp(
            "dns-only",
            "dev",
            {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {"matchLabels": {"env": "ops"}},
                                "podSelector": {"matchLabels": {"app": "dns"}},
                            }
                        ],
                        "ports": [{"port": 53, "protocol": "UDP"}],
                    }
                ],
            },
        )
    )
    out = world.matrix([world.pod("dev/tool"), world.pod("prod/api")])
    for (client, server, port, kind), got in out.items():
        if client == "dev/tool":
            # Refused at connect()/sendto() with EPERM: no packet leaves.
            want = "ok" if (server, port, kind) == ("ops/dns", 53, "udp") else "EPERM"
        else:
            want = "ok"  # negative control: prod is not selected
        assert got == want, (client, server, port, kind, got)
