"""`nodemesh serve`: the xDS control plane (sources -> model -> xDS)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from nodemesh.cmd.common import (
    UsageError,
    add_admin_address,
    add_kubernetes_flags,
    split_host_port,
    until_signalled,
)
from nodemesh.wiring.admin import DEFAULT_ADMIN_HOST, DEFAULT_ADMIN_PORT
from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig, KubernetesConfig
from nodemesh.xds.server import TlsSettings
from nodemesh.xds.server.identity import DEFAULT_URI_PATTERN, NodeIdentityRule
from nodemesh.xds.translate import TranslateOptions
from nodemesh.xds.vocab import DEFAULT_PUSH_DELAY, DEFAULT_XDS_ADDRESS

DEFAULT_ADMIN = f"{DEFAULT_ADMIN_HOST}:{DEFAULT_ADMIN_PORT}"


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    serve = sub.add_parser("serve", parents=[parent], help="run the xDS control plane")
    serve.add_argument(
        "--source-dir",
        type=Path,
        action="append",
        default=[],
        help="directory of Kubernetes YAML manifests (repeatable)",
    )
    add_kubernetes_flags(serve, report_status=True)
    serve.add_argument(
        "--xds-address",
        default=DEFAULT_XDS_ADDRESS,
        help="TCP host:port for ADS/CSDS ('' to disable)",
    )
    serve.add_argument("--xds-socket", type=Path, help="Unix socket for the node-local Envoy")
    add_admin_address(serve, DEFAULT_ADMIN, "admin HTTP host:port")
    serve.add_argument(
        "--listener-address", default="127.0.0.1", help="address Envoy's redirect listeners bind"
    )
    serve.add_argument(
        "--push-delay",
        type=float,
        default=DEFAULT_PUSH_DELAY,
        help="pacing window, seconds: a change after a quiet window is pushed at once, "
        "later ones in the window together at its end",
    )
    serve.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    serve.add_argument("--tls-key", type=Path, help="server private key (PEM, unencrypted)")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        help="CA bundle (PEM) a client certificate must chain to when one is presented",
    )
    serve.add_argument(
        "--require-client-cert", action="store_true", help="refuse clients without a certificate"
    )
    serve.add_argument(
        "--strict-key-perms",
        action="store_true",
        help="refuse a --tls-key readable by group or others (default: warn)",
    )
    serve.add_argument(
        "--node-identity-uri",
        action="append",
        metavar="PATTERN",
        help="with --require-client-cert: a URI SAN naming a node, {node} where its id stands "
        f"(repeatable; default {DEFAULT_URI_PATTERN})",
    )
    serve.add_argument(
        "--node-identity-dns",
        action="append",
        metavar="PATTERN",
        help="with --require-client-cert: a DNS SAN naming a node, e.g. {node}.nodes.example "
        "(repeatable)",
    )
    serve.set_defaults(func=run_serve)


def kubernetes_config(
    args: argparse.Namespace, node_name: str | None = None, reporter: str = "control-plane"
) -> KubernetesConfig | None:
    if not args.kubernetes:
        return None
    return KubernetesConfig(
        server=args.k8s_server,
        kubeconfig=args.kubeconfig,
        context=args.context,
        node_name=node_name,
        report_status=args.report_status,
        reporter=reporter,
    )


def _tls(args: argparse.Namespace) -> TlsSettings | None:
    if args.require_client_cert and args.tls_client_ca is None:
        raise UsageError("--require-client-cert needs --tls-client-ca")
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None or args.strict_key_perms:
            raise UsageError("--tls-client-ca and --strict-key-perms need --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise UsageError("--tls-cert and --tls-key go together")
    return TlsSettings(
        args.tls_cert,
        args.tls_key,
        args.tls_client_ca,
        args.require_client_cert,
        strict_key_perms=args.strict_key_perms,
    )


def _node_identity(args: argparse.Namespace) -> NodeIdentityRule | None:
    """The rule binding node ids to client certificates (identity.py)."""
    uris, dns = args.node_identity_uri or [], args.node_identity_dns or []
    if not args.require_client_cert:
        if uris or dns:
            raise UsageError("--node-identity-uri/--node-identity-dns need --require-client-cert")
        return None
    try:
        # No pattern given: the default SPIFFE form; DNS patterns alone: only those.
        default = [] if dns else [DEFAULT_URI_PATTERN]
        return NodeIdentityRule(tuple(uris or default), tuple(dns))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def serve_config(args: argparse.Namespace) -> ControlPlaneConfig:
    admin_host, admin_port = split_host_port(args.admin, "--admin-address")
    if not args.source_dir and not args.kubernetes:
        raise UsageError("give --source-dir DIR, --kubernetes, or both")
    return ControlPlaneConfig(
        source_dirs=tuple(args.source_dir),
        kubernetes=kubernetes_config(args),
        xds_tcp=args.xds_address or None,
        xds_socket=args.xds_socket,
        tls=_tls(args),
        node_identity=_node_identity(args),
        admin_host=admin_host,
        admin_port=admin_port,
        push_delay=args.push_delay,
        translate=TranslateOptions(listener_address=args.listener_address),
    )


def run_serve(args: argparse.Namespace) -> int:
    config = serve_config(args)
    asyncio.run(until_signalled(ControlPlane(config).run(), "control-plane"))
    return 0
