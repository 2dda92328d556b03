"""deploy/: the agent resolves pods in the kubelet's tree and follows the
Envoy DaemonSet's pods (offline: the manifests against the CLI's parser)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nodemesh.cmd.main import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _doc(name: str) -> Any:
    (doc,) = list(yaml.safe_load_all((DEPLOY / name).read_text()))
    return doc


def test_agent_follows_the_envoy_daemonsets_pods_in_the_kubelets_tree() -> None:
    agent, envoy = _doc("agent-daemonset.yaml"), _doc("envoy-daemonset.yaml")
    argv = agent["spec"]["template"]["spec"]["containers"][0]["args"]
    args = build_parser().parse_args([a.replace("$(NODE_NAME)", "n1") for a in argv])
    assert str(args.kubepods_cgroup) == "auto" and args.pod_cgroups is None
    # Fixed --proxy-cgroup would go stale with the first Envoy restart.
    assert args.proxy_cgroup is None
    assert args.proxy_pod_namespace == envoy["metadata"]["namespace"]
    labels = envoy["spec"]["template"]["metadata"]["labels"]
    wanted = dict(term.split("=", 1) for term in args.proxy_pod_selector.split(","))
    assert wanted and wanted.items() <= labels.items()
    # The DaemonSet's own selector picks the same pods: no other pod matches.
    assert envoy["spec"]["selector"]["matchLabels"].items() <= wanted.items()
