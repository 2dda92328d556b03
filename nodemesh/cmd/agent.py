"""`nodemesh agent`: the node agent's datapath half, and its operator commands.

    nodemesh agent --kubernetes --node-name N --xds-socket S   the node agent: serves the
    nodemesh agent --model-dir DIR --xds-socket SOCK           node Envoy and the kernel
    nodemesh agent [--plan FILE | --model-dir DIR] [--watch]   datapath only: load, apply
    nodemesh agent --cleanup                                   remove everything it made
    nodemesh agent dump [--plan FILE | --model-dir DIR]        plan vs pinned, side by side

Only the arguments live here. The implementation (`agent_cmd`) is imported
when the command runs, so the rest of the `nodemesh` CLI keeps working on a
checkout whose generated protos (nodemesh/_gen) are missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nodemesh.ebpf import loader


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("agent", help="eBPF node agent: datapath load, apply, dump, cleanup")
    p.add_argument("--pin-dir", type=Path, default=loader.DEFAULT_PIN_DIR)
    p.add_argument("--cgroup", type=Path, default=loader.DEFAULT_CGROUP, help="mesh cgroup")
    p.add_argument(
        "--proxy-cgroup",
        type=Path,
        help="the node Envoy's cgroup, fixed (default: follow the Envoy pod in the model)",
    )
    p.add_argument("--proxy-address", help="IPv4 address pods reach the node Envoy at")
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
    p.add_argument("--node-name", default="")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--plan", type=Path, help="a DatapathPlan as JSON")
    src.add_argument("--model-dir", type=Path, help="a directory of Kubernetes YAML")
    p.add_argument(
        "--watch", action="store_true", help="keep running: follow the plan file or model dir"
    )
    xds = p.add_argument_group("xDS for the node Envoy (with --model-dir --watch)")
    xds.add_argument("--xds-socket", type=Path, help="serve the node Envoy on this Unix socket")
    xds.add_argument("--xds-address", help="also serve ADS/CSDS on TCP host:port")
    xds.add_argument(
        "--admin", "--admin-address", default="127.0.0.1:9876", help="admin HTTP host:port"
    )
    xds.add_argument("--envoy-node-id", help="the node Envoy's node id (default: --node-name)")
    xds.add_argument(
        "--envoy-sync-timeout",
        type=float,
        default=5.0,
        help="seconds to wait for the node Envoy's ACK before steering new redirects",
    )
    xds.add_argument(
        "--listener-address", help="address Envoy's listeners bind (default: --proxy-address)"
    )
    from nodemesh.cmd.serve import add_kubernetes_arguments

    add_kubernetes_arguments(p)
    p.add_argument("--cleanup", action="store_true", help="remove all programs, maps and pins")
    p.add_argument("action", nargs="?", choices=["dump"], help="dump: plan vs pinned")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nodemesh.cmd import agent_run as agent_cmd

    return agent_cmd.run(args)
