"""What bench/datapath.py serves and routes: the nginx app and the mesh model.

The app is nginx from Debian, not an Envoy: with an Envoy app, every path
crossed one Envoy more than its proxies, which put a floor of about 0.67x
under node Envoy / sidecars that said nothing about nodemesh.

The model is what a user would apply (Services, EndpointSlices, a
CiliumEnvoyConfig), written as YAML to a directory that `nodemesh agent
--model-dir` reads: the node Envoy's listener, routes and clusters and the
kernel's frontends and redirects all come from the product, not from a
hand-written proxy config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support import factory

NAMESPACE = "bench"


def nginx_config(work: Path, name: str, ports: tuple[int, ...]) -> str:
    """One worker, no access log, `return 200 "ok\\n"` on every port.

    keepalive_requests is raised from its default of 1000 so that a
    keep-alive connection (hey's, or a proxy's upstream pool) is never closed
    by the app mid-cell; the listen backlog is the namespace's somaxconn
    (4096) rather than nginx's 511, as the Envoys' listeners get by default.
    Both are the same for every path: every path ends at this app."""
    listens = "\n".join(f"    listen {p} backlog=4096;" for p in ports)
    temp = work / f"nginx-{name}"
    return f"""
worker_processes 1;
daemon off;
pid {temp}/nginx.pid;
error_log {temp}/error.log error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path {temp}/body;
  proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi;
  scgi_temp_path {temp}/scgi;
  default_type text/plain;
  server {{
{listens}
    location / {{ return 200 "ok\\n"; }}
  }}
}}
"""


def write_nginx(work: Path, name: str, ports: tuple[int, ...]) -> Path:
    (work / f"nginx-{name}").mkdir(exist_ok=True)
    path = work / f"nginx-{name}.conf"
    path.write_text(nginx_config(work, name, ports))
    return path


def _service(name: str, vip: str, target: int) -> dict[str, Any]:
    ports = [factory.port(80, target=target, protocol="TCP")]
    return factory.k8s_service(name, NAMESPACE, cluster_ip=vip, ports=ports, selector={"app": name})


def _slice(name: str, ip: str, port: int) -> dict[str, Any]:
    ports = [factory.port(port, name="", protocol="TCP")]
    endpoints = [factory.endpoint(ip, ready=True)]
    return factory.endpoint_slice(name, endpoints, NAMESPACE, name=f"{name}-1", ports=ports)


def _envoy_config(service: str) -> dict[str, Any]:
    """A CiliumEnvoyConfig in the article's shape: the Service is steered to
    the node Envoy, whose route sends every request to the Service's own
    backends (the translator's shared EDS cluster `<namespace>/<name>`)."""
    route = {
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": f"{service}-route",
        "virtual_hosts": [
            {
                "name": service,
                "domains": ["*"],
                "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": f"{NAMESPACE}/{service}"}}
                ],
            }
        ],
    }
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEnvoyConfig",
        "metadata": {"name": f"{service}-l7", "namespace": NAMESPACE},
        "spec": {"services": [{"name": service, "namespace": NAMESPACE}], "resources": [route]},
    }


def write_model(
    directory: Path, kernel: tuple[str, str, int], via_envoy: tuple[str, str, int]
) -> None:
    """Two Services on one app pod, each (VIP, pod IP, target port): one
    translated in the kernel only, one covered by a CiliumEnvoyConfig (every
    client's connections to it go through the node Envoy)."""
    directory.mkdir(parents=True, exist_ok=True)
    docs: list[dict[str, Any]] = []
    for name, (vip, ip, port) in (("kernel", kernel), ("viaenvoy", via_envoy)):
        docs += [_service(name, vip, port), _slice(name, ip, port)]
    docs.append(_envoy_config("viaenvoy"))
    (directory / "bench.yaml").write_text(yaml.safe_dump_all(docs))
