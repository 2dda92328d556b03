"""The planner, model -> plan, against golden plans (no kernel involved).

Regenerate after an intended change with NODEMESH_UPDATE_GOLDEN=1 and review
the diff of tests/ebpf/golden/.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType

import structlog
from google.protobuf import text_format

from nodemesh.ebpf import planner
from nodemesh.model.objects import (
    Kind,
    L7Redirect,
    LabelSelector,
    ObjectRef,
    Pod,
    RedirectOrigin,
    Service,
    ServiceName,
    ServicePort,
    pairs,
)
from nodemesh.model.snapshot import BackendAddress, MeshModel

GOLDEN = Path(__file__).parent / "golden"


def _svc(name: str, ips: tuple[str, ...], *ports: ServicePort) -> Service:
    return Service(ObjectRef(Kind.SERVICE, "default", name), ips, ports, selector=())


def _be(
    ip: str, port: int, pod: str, *, ready: bool = True, terminating: bool = False
) -> BackendAddress:
    return BackendAddress(ip, port, "node-a", pod, ready, serving=True, terminating=terminating)


def _pod(name: str, ip: str, node: str, **labels: str) -> Pod:
    return Pod(ObjectRef(Kind.POD, "default", name), pairs(labels), (ip,), node)


def model() -> MeshModel:
    httpbin, dns, rolling, headless = (
        ServiceName("default", n) for n in ("httpbin", "dns", "rolling", "headless")
    )
    tcp80 = ServicePort("http", 80, "TCP", 8080)
    services = {
        httpbin: _svc(
            "httpbin", ("10.96.0.10", "fd00::10"), tcp80, ServicePort("s", 99, "SCTP", 99)
        ),
        dns: _svc(
            "dns",
            ("10.96.0.53",),
            ServicePort("dns", 53, "UDP", 53),
            ServicePort("t", 53, "TCP", 53),
        ),
        rolling: _svc("rolling", ("10.96.0.20",), tcp80),
        headless: _svc("headless", (), tcp80),
    }
    backends: dict[ServiceName, dict[int, tuple[BackendAddress, ...]]] = {
        httpbin: {
            80: (
                _be("10.0.2.2", 8080, "httpbin-b"),
                _be("10.0.1.2", 8080, "httpbin-a"),
                _be("10.0.3.2", 8080, "httpbin-c", ready=False),
                _be("fd00::2", 8080, "httpbin-v6"),
            )
        },
        dns: {53: (_be("10.0.5.2", 53, "dns-a"),)},
        # No ready endpoint: the serving, terminating one keeps the VIP alive.
        rolling: {80: (_be("10.0.6.2", 8080, "old", ready=False, terminating=True),)},
        headless: {80: (_be("10.0.7.2", 8080, "h"),)},
    }
    owner = ObjectRef(Kind.NETWORK_POLICY, "default", "httpbin-l7-policy")
    cec = ObjectRef(Kind.ENVOY_CONFIG, "default", "dns-split")
    redirects = (
        L7Redirect(
            httpbin,
            80,
            "TCP",
            10001,
            "l-httpbin",
            "r-httpbin",
            RedirectOrigin.NETWORK_POLICY,
            (owner,),
            clients=(LabelSelector(pairs({"app": "curl"})),),
        ),
        L7Redirect(
            dns, 53, "TCP", 10002, "l-dns", "r-dns", RedirectOrigin.ENVOY_CONFIG, (cec,), None
        ),
    )
    pods = (
        _pod("curl-2", "10.0.9.3", "node-a", app="curl"),
        _pod("curl-1", "10.0.9.2", "node-a", app="curl"),
        _pod("curl-far", "10.1.9.2", "node-b", app="curl"),
        _pod("web", "10.0.9.4", "node-a", app="web"),
    )
    return MeshModel(
        version="golden-v1",
        generation=1,
        services=MappingProxyType(services),
        pods=pods,
        redirects=redirects,
        backends=MappingProxyType({k: MappingProxyType(v) for k, v in backends.items()}),
    )


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("NODEMESH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_plan_for_one_node_matches_golden() -> None:
    _check("plan_node_a.txtpb", text_format.MessageToString(planner.plan(model(), "node-a")))


def test_plan_for_every_node_matches_golden() -> None:
    _check("plan_all_nodes.txtpb", text_format.MessageToString(planner.plan(model())))


def test_plan_is_deterministic_and_names_are_stable() -> None:
    a, b = planner.plan(model(), "node-a"), planner.plan(model(), "node-a")
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    names = [f.name for f in a.frontends]
    assert "default/httpbin:80/TCP@10.96.0.10" in names
    assert len(names) == len(set(names))


def test_resources_keep_their_names_when_content_changes() -> None:
    before = planner.resources(planner.plan(model(), "node-a"))
    m = model()
    httpbin = ServiceName("default", "httpbin")
    fewer = {**m.backends, httpbin: MappingProxyType({80: m.backends_of(httpbin, 80)[:1]})}
    changed = MeshModel(
        version="golden-v2",
        generation=2,
        services=m.services,
        pods=m.pods,
        redirects=m.redirects,
        backends=MappingProxyType(fewer),
    )
    after = planner.resources(planner.plan(changed, "node-a"))
    assert set(before) == {planner.FRONTEND_TYPE_URL, planner.REDIRECT_TYPE_URL}
    for type_url in before:
        assert set(before[type_url]) == set(after[type_url])
    name = "default/httpbin:80/TCP@10.96.0.10"
    fe_type = planner.FRONTEND_TYPE_URL
    assert before[fe_type][name] != after[fe_type][name]
    assert len(after[fe_type][name].backends) == 1
    assert fe_type.endswith(after[fe_type][name].DESCRIPTOR.full_name)


def test_planner_logs_ipv6_vips_it_does_not_steer() -> None:
    with structlog.testing.capture_logs() as logs:
        plan = planner.plan(model(), "node-a")
    assert all(":" not in r.vip for r in plan.redirects)
    warned = [e for e in logs if e["event"] == "ipv6_vips_not_steered"]
    assert [e["vips"] for e in warned] == [["fd00::10"]]
    assert "fd00::10" in {f.vip for f in plan.frontends}
