"""`nodemesh agent`: the node agent and its operator commands.

    nodemesh agent run       --node-name N (--kubernetes | --model-dir DIR)
                             (--xds-socket S | --xds-address A)    the node agent: the node
                                                                   Envoy's xDS and the kernel
    nodemesh agent datapath  (--plan FILE | --model-dir DIR) [--watch]   the kernel only
    nodemesh agent dump      [--plan FILE | --model-dir DIR]      plan vs pinned, side by side
    nodemesh agent cleanup                                        remove everything it made

Only the arguments live here. The implementation (`agent_run`) is imported
when the command runs, so the rest of the `nodemesh` CLI keeps working on a
checkout whose generated protos (nodemesh/_gen) are missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nodemesh.cmd.common import DEFAULT_ADMIN_ADDRESS, add_admin_address, add_kubernetes_flags
from nodemesh.ebpf import loader


def _pins(parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Where the datapath is pinned and attached (every agent subcommand)."""
    p = argparse.ArgumentParser(add_help=False, parents=[parent])
    p.add_argument("--pin-dir", type=Path, default=loader.DEFAULT_PIN_DIR)
    p.add_argument("--cgroup", type=Path, default=loader.DEFAULT_CGROUP, help="mesh cgroup")
    p.add_argument(
        "--proxy-cgroup",
        type=Path,
        help="the node Envoy's cgroup, fixed (default: follow the Envoy pod in the model)",
    )
    return p


def _datapath(pins: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """How the plan meets this node: pods, the node Envoy, its address."""
    p = argparse.ArgumentParser(add_help=False, parents=[pins])
    p.add_argument("--proxy-address", help="IPv4 address pods reach the node Envoy at")
    p.add_argument("--node-name", default="", help="this node's Kubernetes name")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--pod-cgroups", type=Path, help="dir of <namespace>_<name> pod cgroups")
    layout.add_argument(
        "--kubepods-cgroup",
        type=Path,
        help="the kubelet's kubepods cgroup, or 'auto' to find it below --cgroup; pods are "
        "resolved by UID in the kubelet's layout (systemd or cgroupfs driver)",
    )
    p.add_argument(
        "--proxy-pod-namespace",
        default="nodemesh-system",
        help="namespace of the node Envoy pods (followed when --proxy-cgroup is not given)",
    )
    p.add_argument(
        "--proxy-pod-selector",
        default="app.kubernetes.io/name=nodemesh-envoy",
        help="labels (k=v,...) of the node Envoy pods; '' follows none",
    )
    p.add_argument(
        "--host-ip",
        action="append",
        help="an address of this node (identity host in policy); repeat for each",
    )
    p.add_argument(
        "--policy-events-allowed",
        action="store_true",
        help="report allowed policy verdicts in the event ring too (denied ones always are)",
    )
    p.add_argument(
        "--service-events",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="report service translations, L7 steering and zero-backend refusals "
        "in the event ring (flows of type translated, to-proxy, no-backend)",
    )
    p.add_argument(
        "--service-events-sample-every",
        type=int,
        default=1,
        help="report one translation or steering in N, at random (refusals: every one)",
    )
    return p


def _model_or_plan(p: argparse.ArgumentParser, required: bool) -> None:
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--plan", type=Path, help="a DatapathPlan as JSON")
    src.add_argument("--model-dir", type=Path, help="a directory of Kubernetes YAML")


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    agent = subparsers.add_parser("agent", help="eBPF node agent: run, datapath, dump, cleanup")
    actions = agent.add_subparsers(dest="action", metavar="ACTION", required=True)
    pins = _pins(parent)
    datapath = _datapath(pins)

    run = actions.add_parser(
        "run", parents=[datapath], help="the node agent: xDS for the node Envoy and the kernel"
    )
    run.add_argument("--model-dir", type=Path, help="a directory of Kubernetes YAML")
    add_kubernetes_flags(run, report_status=True)
    run.add_argument("--xds-socket", type=Path, help="serve the node Envoy on this Unix socket")
    run.add_argument("--xds-address", help="also serve ADS/CSDS on TCP host:port")
    add_admin_address(run, DEFAULT_ADMIN_ADDRESS, "admin HTTP host:port (keep it on loopback)")
    run.add_argument("--envoy-node-id", help="the node Envoy's node id (default: --node-name)")
    run.add_argument(
        "--envoy-sync-timeout",
        type=float,
        default=5.0,
        help="seconds to wait for the node Envoy's ACK before steering new redirects",
    )
    run.add_argument(
        "--listener-address", help="address Envoy's listeners bind (default: --proxy-address)"
    )
    flows = run.add_argument_group("flows (nodemesh observe)")
    flows.add_argument(
        "--als-socket",
        type=Path,
        help="Unix socket the node Envoy streams access logs to (default: beside --xds-socket)",
    )
    flows.add_argument(
        "--observer-address",
        help="the Observer gRPC service: unix:PATH or host:port "
        "(default: unix:observer.sock beside --xds-socket, as Hubble's hubble.sock)",
    )
    flows.add_argument("--flows-ring-size", type=int, default=4096, help="flows held per node")
    flows.add_argument(
        "--flows-sample-every", type=int, default=1, help="keep one flow in N in the ring"
    )
    run.set_defaults(func=_run, plan=None)

    only = actions.add_parser(
        "datapath", parents=[datapath], help="the kernel only: load, apply a plan or model"
    )
    _model_or_plan(only, required=False)
    only.add_argument(
        "--watch", action="store_true", help="keep running: follow the plan file or model dir"
    )
    only.set_defaults(func=_run)

    dump = actions.add_parser("dump", parents=[datapath], help="the plan beside what is pinned")
    _model_or_plan(dump, required=False)
    dump.set_defaults(func=_run)

    # The same flags as `run` are accepted, so an operator can reuse them.
    cleanup = actions.add_parser(
        "cleanup", parents=[datapath], help="remove every program, map, pin and link it made"
    )
    cleanup.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from nodemesh.cmd import agent_run

    return agent_run.run(args)
