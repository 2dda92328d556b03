"""Scenario 7 and `agent dump`: dump shows plan against pins; `--cleanup`
removes every pin and attachment; the node's teardown leaves no namespace
or cgroup behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format
from pyroute2 import netns

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import loader

from .node import NODE_IP, MeshNode
from .plans import frontend, plan, redirect
from .test_datapath_agent import agent_argv

pytestmark = pytest.mark.privileged

VIP = "10.96.0.10"


def attached(cgroup: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True, check=True
    ).stdout
    return json.loads(out.strip() or b"[]")  # type: ignore[no-any-return]


def run_agent(node: MeshNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_argv(node, *args), capture_output=True, text=True, timeout=120, check=False
    )


def test_dump_then_cleanup_leaves_nothing(workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root)")
    node = MeshNode(workdir)
    try:
        node.setup()
        curl = node.add_pod("default", "curl")
        fe = frontend(VIP, 80, pb.TCP, [("10.0.9.2", 8080)])
        p = plan(fe, redirects=(redirect(fe, 15001, ["default/curl"]),))
        plan_file = workdir / "plan.json"
        plan_file.write_text(json_format.MessageToJson(p))
        assert run_agent(node, "datapath", f"--plan={plan_file}").returncode == 0
        assert {e["name"] for e in attached(node.mesh)} >= {
            "nm_connect4",
            "nm_sockops",
            "nm_sock_release",
        }
        # getsockopt on the proxy's cgroup only (a pinned link and program).
        assert "nm_getsockopt" not in {e["name"] for e in attached(node.mesh)}
        assert [e["name"] for e in attached(node.proxy_cgroup)] == ["nm_getsockopt"]
        assert (node.pin_dir / "links" / "nm_getsockopt_proxy").exists()
        assert (node.pin_dir / "progs" / "nm_getsockopt").exists()

        dump = run_agent(node, "dump", f"--plan={plan_file}")
        assert dump.returncode == 0, dump.stderr
        assert "10.96.0.10:80/TCP" in dump.stdout and "DIFFERS" not in dump.stdout
        assert dump.stdout.count("in sync") == 2  # the frontend and curl's redirect
        assert "nm_services_v1 2/65536" in dump.stdout  # slot 0 and one backend

        fe2 = frontend(VIP, 80, pb.TCP, [("10.0.9.3", 8080)])
        plan_file.write_text(json_format.MessageToJson(plan(fe2)))
        drift = run_agent(node, "dump", f"--plan={plan_file}").stdout
        assert "DIFFERS" in drift and "STALE" in drift

        gone = run_agent(node, "cleanup")
        assert gone.returncode == 0, gone.stderr
        assert not node.pin_dir.exists()
        assert attached(node.mesh) == [] and attached(node.proxy_cgroup) == []
        assert curl.cgroup.exists()  # the agent removes only what it made
        assert loader.cleanup(node.config()) == []  # idempotent
    finally:
        node.teardown()
    assert not [n for n in netns.listnetns() if n.startswith(f"nm{node.tag}")]
    assert not node.cgroup_root.exists()
    assert not node.bpffs.is_mount()


def test_dump_refuses_a_pin_dir_off_bpffs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nodemesh.cmd.main", "agent", "dump", f"--pin-dir={tmp_path}/nm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "is not on a BPF filesystem" in out.stderr and "mount -t bpf" in out.stderr
    assert "Traceback" not in out.stderr
    assert NODE_IP not in out.stderr
