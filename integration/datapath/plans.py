"""Small builders for hand-written datapath plans in the integration tests."""

from __future__ import annotations

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf.planner import frontend_name, redirect_name


def frontend(
    vip: str, port: int, proto: int, backends: list[tuple[str, int]], service: str = "default/svc"
) -> pb.ServiceFrontend:
    return pb.ServiceFrontend(
        name=frontend_name(service, port, "TCP" if proto == pb.TCP else "UDP", vip),
        model_version="test",
        service=service,
        vip=vip,
        port=port,
        protocol=proto,
        backends=[pb.Backend(address=a, port=p) for a, p in backends],
    )


def redirect(fe: pb.ServiceFrontend, proxy_port: int, clients: list[str] | None) -> pb.L7Redirect:
    """`clients` None steers every client; otherwise the listed "ns/name" pods."""
    return pb.L7Redirect(
        name=redirect_name(fe.name),
        model_version="test",
        frontend=fe.name,
        vip=fe.vip,
        port=fe.port,
        protocol=fe.protocol,
        proxy_port=proxy_port,
        all_clients=clients is None,
        clients=[pb.ClientPod(pod=c) for c in clients or ()],
    )


def plan(
    *frontends: pb.ServiceFrontend, redirects: tuple[pb.L7Redirect, ...] = ()
) -> pb.DatapathPlan:
    return pb.DatapathPlan(model_version="test", frontends=frontends, redirects=redirects)
