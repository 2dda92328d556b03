"""Policy compilation: identities, ipcache, endpoints and entries from a model."""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh.ebpf import identity as ids
from nodemesh.ebpf import policy_plan
from nodemesh.ebpf.policy_plan import (
    ALLOW,
    DENY,
    EGRESS,
    FLAG_EGRESS,
    FLAG_INGRESS,
    INGRESS,
    TCP,
    UDP,
    port_prefixes,
    resolve_intervals,
)
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore


def pod(
    ns: str, name: str, ip: str, ports: list[dict[str, Any]] | None = None, **labels: str
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports or []}]},
        "status": {"podIP": ip, "phase": "Running"},
    }


def knp(name: str, spec: dict[str, Any], ns: str = "a") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def model(*objs: dict[str, Any]) -> MeshModel:
    store = MeshStore()
    for obj in objs:
        store.apply("t", obj)
    built = store.build()
    assert built.errors == ()
    return built


PODS = (
    pod("a", "web", "10.0.1.2", [{"name": "http", "containerPort": 8080}], app="web"),
    pod(
        "a",
        "web2",
        "10.0.1.3",
        [{"name": "http", "containerPort": 8080}],
        app="web",
        **{"pod-template-hash": "x"},
    ),
    pod("a", "cli", "10.0.2.2", app="cli"),
    pod("b", "cli", "10.0.3.2", app="cli"),
)


def test_port_prefixes_cover_exactly() -> None:
    for lo, hi in [(0, 65535), (80, 80), (8000, 8100), (1, 1023), (1024, 65535)]:
        covered = set()
        for port, bits in port_prefixes(lo, hi):
            size = 1 << (16 - bits)
            assert port % size == 0
            covered |= set(range(port, port + size))
        assert covered == set(range(lo, hi + 1))
    assert list(port_prefixes(0, 65535)) == [(0, 0)]


def test_deny_wins_and_lowest_policy_names_allow() -> None:
    got = resolve_intervals([(0, 65535, ALLOW, 3), (25, 25, DENY, 5), (80, 90, ALLOW, 2)])
    assert got == [
        (0, 24, ALLOW, 3),
        (25, 25, DENY, 5),
        (26, 79, ALLOW, 3),
        (80, 90, ALLOW, 2),
        (91, 65535, ALLOW, 3),
    ]


def test_identities_shared_deterministic_and_reserved() -> None:
    m = model(*PODS)
    plan = policy_plan.plan(m, "n1", host_ips=["10.0.0.1"])
    web, web2 = plan.endpoints["a/web"], plan.endpoints["a/web2"]
    # pod-template-hash is not security relevant: one identity.
    assert web.identity == web2.identity >= ids.FIRST_LABELS
    assert plan.endpoints["a/cli"].identity != plan.endpoints["b/cli"].identity
    assert plan.ipcache["10.0.0.1/32"] == (ids.HOST, 0)
    again = policy_plan.plan(model(*reversed(PODS)), "n1", host_ips=["10.0.0.1"])
    assert again.ipcache == plan.ipcache and again.entries == plan.entries
    # No policy: nothing enforced, no entries.
    assert plan.entries == {} and all(e.flags == 0 for e in plan.endpoints.values())


def test_collisions_probe_deterministically(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_hash", lambda text: 7)
    got = ids.label_identities([(("a", "1"),), (("a", "2"),), (("a", "0"),)])
    assert sorted(got.values()) == [
        ids.FIRST_LABELS + 7,
        ids.FIRST_LABELS + 8,
        ids.FIRST_LABELS + 9,
    ]
    assert got["a=0"] == ids.FIRST_LABELS + 7


def test_allow_from_app_named_port_and_egress_dns() -> None:
    m = model(
        *PODS,
        knp(
            "web-in",
            {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"app": "cli"}}}],
                        "ports": [{"port": "http"}],
                    }
                ],
            },
        ),
        knp(
            "dns-only",
            {
                "podSelector": {"matchLabels": {"app": "cli"}},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}],
            },
        ),
    )
    plan = policy_plan.plan(m, "n1")
    web = plan.endpoints["a/web"]
    cli_a, cli_b = plan.endpoints["a/cli"].identity, plan.endpoints["b/cli"].identity
    assert web.flags == FLAG_INGRESS and plan.endpoints["a/cli"].flags == FLAG_EGRESS
    pid = plan.policy_names.index("NetworkPolicy a/web-in")
    # Named port "http" resolved on web's own pods: 8080 exactly; same namespace only.
    assert plan.entries[(web.identity, INGRESS, TCP, cli_a, 8080, 16)] == (ALLOW, pid)
    assert not any(k[3] == cli_b for k in plan.entries if k[0] == web.identity)
    dns = plan.policy_names.index("NetworkPolicy a/dns-only")
    assert plan.entries[(cli_a, EGRESS, UDP, ids.ANY, 53, 16)] == (ALLOW, dns)
    assert plan.ipcache["10.0.1.2/32"] == (web.identity, FLAG_INGRESS)


def test_cidr_identities_and_deny() -> None:
    cnp = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "ext", "namespace": "a"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "cli"}},
            "egress": [{"toCIDRSet": [{"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}]}],
            "egressDeny": [
                {
                    "toCIDR": ["192.0.2.64/26"],
                    "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}],
                }
            ],
        },
    }
    plan = policy_plan.plan(model(*PODS, cnp), "n1")
    cli = plan.endpoints["a/cli"].identity
    outer, inner, hole = (
        plan.ipcache[p][0] for p in ("192.0.2.0/24", "192.0.2.64/26", "192.0.2.128/25")
    )
    assert plan.entries[(cli, EGRESS, TCP, outer, 0, 0)][0] == ALLOW
    assert not any(k[3] == hole for k in plan.entries)
    # The /26 is inside the allowed /24: allowed except its port 22.
    assert plan.entries[(cli, EGRESS, TCP, inner, 22, 16)][0] == DENY
    assert plan.entries[(cli, EGRESS, TCP, inner, 23, 16)][0] == ALLOW
    assert plan.entries[(cli, EGRESS, UDP, inner, 0, 0)][0] == ALLOW


def test_host_network_and_proxy_pods_are_the_host() -> None:
    envoy = pod("nodemesh-system", "envoy", "10.0.0.1", app="envoy")
    envoy["spec"]["hostNetwork"] = True
    agent = pod("nodemesh-system", "agent", "10.0.0.1", app="agent")
    agent["spec"]["hostNetwork"] = True
    proxy = pod("nodemesh-system", "proxy", "10.9.0.5", app="proxy")
    deny = knp("all", {"podSelector": {}}, ns="nodemesh-system")
    plan = policy_plan.plan(
        model(*PODS, envoy, agent, proxy, deny), "n1", exempt=["nodemesh-system/proxy"]
    )
    # The node's address stays `host` even though pods claim it; neither
    # hostNetwork pods nor the proxy are endpoints, whatever selects them.
    assert plan.ipcache["10.0.0.1/32"] == (ids.HOST, 0)
    assert plan.ipcache["10.9.0.5/32"] == (ids.HOST, 0)
    assert not {"nodemesh-system/envoy", "nodemesh-system/agent", "nodemesh-system/proxy"} & set(
        plan.endpoints
    )
