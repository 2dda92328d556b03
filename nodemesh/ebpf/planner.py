"""Model -> datapath plan. Pure: no kernel, no I/O, same model in, same plan out.

Which backends a VIP gets follows kube-proxy: the ready endpoints, or, when
none is ready, the serving ones that are terminating (so a rolling update's
last pod keeps taking connections). Each cluster IP is a frontend of its own
and gets only the backends of its own address family (a dual-stack Service
has an IPv4 and an IPv6 frontend). SCTP ports are outside this datapath and
are left out, logged. L7 redirects are planned for IPv4 VIPs only: IPv6
connections are not steered to Envoy (no IPv6 SO_ORIGINAL_DST yet), so an
IPv6 VIP with an L7 rule is translated straight to its backends, logged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from typing import Any

import structlog

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.model.objects import L7Redirect, Pod, Service, ServicePort
from nodemesh.model.redirects import NAMESPACE_LABEL
from nodemesh.model.snapshot import BackendAddress, MeshModel

log = structlog.get_logger("nodemesh.ebpf.planner")

PROTOCOLS = {"TCP": pb.TCP, "UDP": pb.UDP}
PROTOCOL_NAMES = {pb.TCP: "TCP", pb.UDP: "UDP"}


def _version(address: str) -> int:
    """4, 6, or 0 for what the datapath cannot use (bad text, IPv4-mapped)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return 0
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return 0
    return ip.version


def _is_ipv4(address: str) -> bool:
    return _version(address) == 4


def frontend_name(service: str, port: int, protocol: str, vip: str) -> str:
    return f"{service}:{port}/{protocol}@{vip}"


def redirect_name(frontend: str) -> str:
    return f"l7:{frontend}"


def _chosen(backends: Iterable[BackendAddress]) -> list[BackendAddress]:
    all_ = list(backends)
    ready = [b for b in all_ if b.ready]
    return ready or [b for b in all_ if b.serving and b.terminating]


def _backends(model: MeshModel, svc: Service, port: ServicePort, version: int) -> list[pb.Backend]:
    out: dict[tuple[int, int], pb.Backend] = {}
    for b in _chosen(model.backends_of(svc.service_name, port.port)):
        if _version(b.address) != version:
            continue
        pod = f"{svc.ref.namespace}/{b.pod_name}" if b.pod_name else ""
        key = (int(ipaddress.ip_address(b.address)), b.port)
        out.setdefault(key, pb.Backend(address=b.address, port=b.port, pod=pod))
    return [out[k] for k in sorted(out)]


def _frontends_of(model: MeshModel, svc: Service) -> Iterator[pb.ServiceFrontend]:
    vips = [ip for ip in svc.cluster_ips if _version(ip)]
    for port in svc.ports:
        if port.protocol not in PROTOCOLS:
            log.info("port_skipped", service=str(svc.service_name), protocol=port.protocol)
            continue
        for vip in vips:
            backends = _backends(model, svc, port, _version(vip))
            yield pb.ServiceFrontend(
                name=frontend_name(str(svc.service_name), port.port, port.protocol, vip),
                model_version=model.version,
                service=str(svc.service_name),
                vip=vip,
                port=port.port,
                protocol=PROTOCOLS[port.protocol],
                backends=backends,
            )


def _client_pods(model: MeshModel, redirect: L7Redirect, node: str) -> list[pb.ClientPod]:
    if redirect.clients is None:
        return []
    chosen: list[Pod] = []
    for pod in model.pods:
        if node and pod.node_name not in (node, None):
            continue
        # Plus the namespace label Cilium gives every identity: consumer routes
        # (GAMMA) select their namespace's pods by it.
        labels = {**dict(pod.labels), NAMESPACE_LABEL: pod.ref.namespace}
        if any(sel.matches(labels) for sel in redirect.clients):
            chosen.append(pod)
    chosen.sort(key=lambda p: (p.ref.namespace, p.ref.name))
    return [pb.ClientPod(pod=f"{p.ref.namespace}/{p.ref.name}", ips=sorted(p.ips)) for p in chosen]


def _redirects_of(model: MeshModel, redirect: L7Redirect, node: str) -> Iterator[pb.L7Redirect]:
    svc = model.services.get(redirect.service)
    if svc is None or redirect.protocol != "TCP":
        return
    clients = _client_pods(model, redirect, node)
    unsteered = [ip for ip in svc.cluster_ips if _version(ip) == 6]
    if unsteered:
        log.warning(
            "ipv6_vips_not_steered",
            consequence="translated to backends; L7 rules not enforced on them",
            service=str(redirect.service),
            port=redirect.port,
            vips=unsteered,
            owners=sorted(str(o) for o in redirect.owners),
        )
    for vip in (ip for ip in svc.cluster_ips if _is_ipv4(ip)):
        fe = frontend_name(str(redirect.service), redirect.port, redirect.protocol, vip)
        yield pb.L7Redirect(
            name=redirect_name(fe),
            model_version=model.version,
            frontend=fe,
            vip=vip,
            port=redirect.port,
            protocol=pb.TCP,
            proxy_port=redirect.proxy_port,
            listener=redirect.listener,
            all_clients=redirect.clients is None,
            clients=clients,
            owners=sorted(str(o) for o in redirect.owners),
        )


def plan(model: MeshModel, node_name: str = "") -> pb.DatapathPlan:
    """The plan for `node_name` ("" plans client pods of every node)."""
    frontends: list[pb.ServiceFrontend] = []
    for name in sorted(model.services):
        frontends.extend(_frontends_of(model, model.services[name]))
    redirects: list[pb.L7Redirect] = []
    for redirect in model.redirects:
        redirects.extend(_redirects_of(model, redirect, node_name))
    frontends.sort(key=lambda f: f.name)
    redirects.sort(key=lambda r: r.name)
    return pb.DatapathPlan(
        model_version=model.version,
        node_name=node_name,
        frontends=frontends,
        redirects=redirects,
    )


FRONTEND_TYPE_URL = "type.googleapis.com/nodemesh.v1.ServiceFrontend"
REDIRECT_TYPE_URL = "type.googleapis.com/nodemesh.v1.L7Redirect"


def resources(plan_: pb.DatapathPlan) -> dict[str, dict[str, Any]]:
    """The plan as xDS resources: type URL -> resource name -> message.

    This is the shape a snapshot cache serves over delta xDS. Names are stable
    across model versions, so a changed backend set replaces one resource,
    and a removed Service deletes exactly its own.
    """
    return {
        FRONTEND_TYPE_URL: {f.name: f for f in plan_.frontends},
        REDIRECT_TYPE_URL: {r.name: r for r in plan_.redirects},
    }
