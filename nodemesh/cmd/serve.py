"""`nodemesh serve`, `status`, `config-dump` and `demo`.

Expected failures (a bad flag value, an unreachable admin port, a demo that
cannot run) become one line on stderr and exit 1; this is the one place that
mapping happens for these commands.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from nodemesh.cmd.logs import configure_logging
from nodemesh.cmd.status_view import StatusError, fetch_json, fetch_syncz, format_status
from nodemesh.wiring.admin import DEFAULT_ADMIN_HOST, DEFAULT_ADMIN_PORT
from nodemesh.wiring.controlplane import KubernetesConfig
from nodemesh.xds.server import TlsSettings
from nodemesh.xds.translate import TranslateOptions

DEFAULT_ADMIN = f"{DEFAULT_ADMIN_HOST}:{DEFAULT_ADMIN_PORT}"


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the xDS control plane")
    serve.add_argument(
        "--source-dir",
        type=Path,
        action="append",
        default=[],
        help="directory of Kubernetes YAML manifests (repeatable)",
    )
    add_kubernetes_arguments(serve)
    serve.add_argument(
        "--xds-address",
        default="127.0.0.1:18000",
        help="TCP host:port for ADS/CSDS ('' to disable)",
    )
    serve.add_argument("--xds-socket", type=Path, help="Unix socket for the node-local Envoy")
    serve.add_argument("--admin", default=DEFAULT_ADMIN, help="admin HTTP host:port")
    serve.add_argument(
        "--listener-address", default="127.0.0.1", help="address Envoy's redirect listeners bind"
    )
    serve.add_argument(
        "--push-delay",
        type=float,
        default=0.1,
        help="coalescing window for bursts of changes, seconds",
    )
    serve.add_argument("--tls-cert", type=Path)
    serve.add_argument("--tls-key", type=Path)
    serve.add_argument("--tls-client-ca", type=Path)
    serve.add_argument("--require-client-cert", action="store_true")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=run_serve)

    status = sub.add_parser("status", help="which Envoys are in sync, and why not")
    status.add_argument("--admin", default=DEFAULT_ADMIN)
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.set_defaults(func=run_status)

    dump = sub.add_parser("config-dump", help="what the server holds for one node")
    dump.add_argument("--node", required=True)
    dump.add_argument("--type", choices=["clusters", "listeners", "routes", "endpoints"])
    dump.add_argument("-o", "--output", choices=["json", "yaml"], default="json")
    dump.add_argument("--admin", default=DEFAULT_ADMIN)
    dump.set_defaults(func=run_config_dump)

    demo = sub.add_parser("demo", help="the article's canary through a real Envoy")
    demo.add_argument("--source-dir", type=Path, help="default: examples/canary")
    demo.add_argument("--requests", type=int, default=400, help="requests per round")
    demo.add_argument("--rounds", type=int, default=1, help="0: until Ctrl-C")
    demo.add_argument("--weights", help="e.g. 50,50: change the split live after round 1")
    demo.add_argument("--sotw", action="store_true", help="state-of-the-world ADS, not delta")
    demo.set_defaults(func=run_demo)


def add_kubernetes_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that make a command follow the Kubernetes API (serve, agent)."""
    group = parser.add_argument_group("Kubernetes")
    group.add_argument(
        "--kubernetes",
        action="store_true",
        help="watch the API server (in-cluster account, else kubeconfig)",
    )
    group.add_argument("--kubeconfig", help="kubeconfig file")
    group.add_argument("--context", help="kubeconfig context")
    group.add_argument("--k8s-server", help="API server URL without credentials (tests, proxies)")
    group.add_argument(
        "--no-report-status", action="store_true", help="do not write conditions and Events back"
    )


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
        report_status=not args.no_report_status,
        reporter=reporter,
    )


def _split_host_port(text: str, flag: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{flag}: expected host:port, got {text!r}")
    return host, int(port)


def _tls(args: argparse.Namespace) -> TlsSettings | None:
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    return TlsSettings(args.tls_cert, args.tls_key, args.tls_client_ca, args.require_client_cert)


def run_serve(args: argparse.Namespace) -> int:
    from nodemesh.k8s_watch.errors import K8sWatchError
    from nodemesh.wiring.controlplane import ControlPlane, ControlPlaneConfig

    configure_logging(args.log_level)
    try:
        admin_host, admin_port = _split_host_port(args.admin, "--admin")
        if not args.source_dir and not args.kubernetes:
            raise ValueError("give --source-dir DIR, --kubernetes, or both")
        config = ControlPlaneConfig(
            source_dirs=tuple(args.source_dir),
            kubernetes=kubernetes_config(args),
            xds_tcp=args.xds_address or None,
            xds_socket=args.xds_socket,
            tls=_tls(args),
            admin_host=admin_host,
            admin_port=admin_port,
            push_delay=args.push_delay,
            translate=TranslateOptions(listener_address=args.listener_address),
        )
    except ValueError as exc:
        print(f"nodemesh serve: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(ControlPlane(config).run())
    except KeyboardInterrupt:
        return 0
    except K8sWatchError as exc:
        print(f"nodemesh serve: {exc}", file=sys.stderr)
        return 1
    return 0


def run_status(args: argparse.Namespace) -> int:
    try:
        syncz = fetch_syncz(args.admin)
    except StatusError as exc:
        print(f"nodemesh status: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(syncz, indent=2, sort_keys=True)
        if args.output == "json"
        else format_status(syncz)
    )
    return 0


def run_config_dump(args: argparse.Namespace) -> int:
    query = {"node": args.node, **({"type": args.type} if args.type else {})}
    try:
        dump = fetch_json(args.admin, "/debug/config_dump?" + urllib.parse.urlencode(query))
    except StatusError as exc:
        print(f"nodemesh config-dump: {exc}", file=sys.stderr)
        return 1
    if args.output == "yaml":
        print(yaml.safe_dump(dump, sort_keys=True), end="")
    else:
        print(json.dumps(dump, indent=2, sort_keys=True))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from nodemesh.cmd.demo.canary import DemoError
    from nodemesh.cmd.demo.run import DemoOptions, parse_weights
    from nodemesh.cmd.demo.run import run_demo as demo_main
    from nodemesh.node.envoy_process import EnvoyError

    configure_logging("warning")
    try:
        options = DemoOptions(
            requests=args.requests,
            rounds=args.rounds,
            weights=parse_weights(args.weights) if args.weights else None,
            api_type="GRPC" if args.sotw else "DELTA_GRPC",
        )
        if args.source_dir is not None:
            options = dataclasses.replace(options, source_dir=args.source_dir)
        return asyncio.run(demo_main(options))
    except (DemoError, EnvoyError) as exc:
        print(f"nodemesh demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
