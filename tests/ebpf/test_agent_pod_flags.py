"""`nodemesh agent`'s pod and proxy flags, parsed into resolvers (no kernel)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from nodemesh.cmd import agent_run as agent_cmd
from nodemesh.cmd.main import build_parser
from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.ebpf.errors import PlanError
from nodemesh.node.kubelet_cgroups import KubeletPodCgroups


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["agent", "datapath", *argv])


def test_kubepods_auto_is_found_below_the_mesh_cgroup(tmp_path: Path) -> None:
    (tmp_path / "kubelet.slice" / "kubelet-kubepods.slice").mkdir(parents=True)
    args = parse(f"--cgroup={tmp_path}", "--kubepods-cgroup=auto", "--node-name=n1")
    pods = agent_cmd.pod_cgroups(args)
    assert isinstance(pods, KubeletPodCgroups)
    assert pods.root == tmp_path / "kubelet.slice" / "kubelet-kubepods.slice"
    assert pods.node_name == "n1"


def test_without_kubepods_the_directory_layout_stays(tmp_path: Path) -> None:
    pods = agent_cmd.pod_cgroups(parse(f"--cgroup={tmp_path}"))
    assert isinstance(pods, DirectoryPodCgroups) and pods.root == tmp_path


def test_kubelet_layout_needs_a_model_not_a_plan_file(tmp_path: Path) -> None:
    args = parse(f"--cgroup={tmp_path}", "--kubepods-cgroup=auto", f"--plan={tmp_path}/p.json")
    with pytest.raises(PlanError, match="--kubepods-cgroup resolves pods by UID"):
        agent_cmd.pod_cgroups(args)


def test_proxy_pod_selector_defaults_bad_input_and_fixed_cgroup(tmp_path: Path) -> None:
    selector = agent_cmd.proxy_pod(parse())
    assert selector is not None and selector.namespace == "nodemesh-system"
    assert selector.labels == (("app.kubernetes.io/name", "nodemesh-envoy"),)
    with pytest.raises(PlanError, match="--proxy-pod-selector: expected key=value"):
        agent_cmd.proxy_pod(parse("--proxy-pod-selector=app"))
    assert agent_cmd.proxy_pod(parse(f"--proxy-cgroup={tmp_path}")) is None
    assert agent_cmd.proxy_pod(parse("--proxy-pod-selector=")) is None


def test_pod_cgroups_and_kubepods_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--pod-cgroups=/a", "--kubepods-cgroup=auto")
    assert "not allowed with argument" in capsys.readouterr().err
