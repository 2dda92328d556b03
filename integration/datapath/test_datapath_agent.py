"""Scenario 4 and least privilege: the agent CLI, run with only CAP_BPF and
CAP_NET_ADMIN (setpriv clears every other capability, CAP_SYS_ADMIN
included), restarted under a steady connect loop.

Evidence that state is rebuilt from the pins: the restarted agent writes and
deletes nothing for an unchanged plan, and the pinned map and link keep their
kernel ids (reused, not recreated) while the link's program is replaced."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb

from .node import NODE_IP, MeshNode
from .plans import frontend, plan

pytestmark = pytest.mark.privileged

VIP = "10.96.0.10"
LEAST = ["setpriv", "--bounding-set=-all,+bpf,+net_admin", "--inh-caps=-all", "--"]
CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def agent_argv(node: MeshNode, action: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nodemesh.cmd.main",
        "agent",
        action,
        f"--pin-dir={node.pin_dir}",
        f"--cgroup={node.mesh}",
        f"--proxy-cgroup={node.proxy_cgroup}",
        f"--proxy-address={NODE_IP}",
        *extra,
    ]


def start_agent(node: MeshNode, plan_file: Path) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [*LEAST, *agent_argv(node, "datapath", f"--plan={plan_file}", "--watch")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    node.procs.append(proc)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(ANSI.sub("", line.rstrip()))
        if line.strip() == "agent ready":
            return proc, lines
    raise AssertionError("agent exited before ready:\n" + "\n".join(lines))


def stop_agent(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def effective_caps(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff")


def kernel_id(kind: str, pin: Path, field: str = "id") -> int:
    out = subprocess.run(
        ["bpftool", "-j", kind, "show", "pinned", str(pin)], capture_output=True, check=True
    ).stdout
    return int(json.loads(out)[field])


def write_plan(path: Path, p: pb.DatapathPlan) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json_format.MessageToJson(p))
    tmp.replace(path)  # atomic: the agent never reads half a plan


def test_restart_under_connect_loop_with_least_privilege(node: MeshNode, workdir: Path) -> None:
    client = node.add_pod("default", "client")
    pods = [node.add_pod("default", f"b{i}") for i in (1, 2, 3)]
    for p in pods:
        node.server(p, "tcp-server", "8080", p.name)
    plan_file = workdir / "plan.json"
    write_plan(plan_file, plan(frontend(VIP, 80, pb.TCP, [(p.ip, 8080) for p in pods[:2]])))

    agent, _ = start_agent(node, plan_file)
    caps = effective_caps(agent.pid)
    assert caps == (1 << CAP_BPF) | (1 << CAP_NET_ADMIN)
    assert not caps & (1 << CAP_SYS_ADMIN)
    services_pin = node.pin_dir / "maps" / "nm_services_v1"
    connect_link = node.pin_dir / "links" / "nm_connect4"
    ids = (kernel_id("map", services_pin), kernel_id("link", connect_link))
    prog = kernel_id("link", connect_link, "prog_id")

    stop = workdir / "stop"
    loop = node.probe(client, "tcp-loop", VIP, "80", str(stop))
    assert loop.stdout is not None and loop.stdout.readline().strip() == "ready"
    hold = node.probe(client, "tcp-hold", VIP, "80")
    assert hold.stdout is not None and "backend" in json.loads(hold.stdout.readline())

    stop_agent(agent)
    node.client(client, "tcp-client", VIP, "80", "5")  # the datapath outlives the agent
    agent, lines = start_agent(node, plan_file)
    # The agent logs JSON lines (stdout is not a terminal).
    events = [json.loads(ln) for ln in lines if ln.startswith("{")]
    applied = [e for e in events if e["event"] == "plan_applied"]
    assert applied and applied[-1]["writes"] == 0 and applied[-1]["deletes"] == 0, lines
    assert (kernel_id("map", services_pin), kernel_id("link", connect_link)) == ids
    # The restarted agent loaded its programs afresh and swapped them into the
    # same link (BPF_LINK_UPDATE): that is how an upgrade goes in without a gap.
    assert kernel_id("link", connect_link, "prog_id") != prog

    # The restarted agent keeps following the plan.
    write_plan(plan_file, plan(frontend(VIP, 80, pb.TCP, [(p.ip, 8080) for p in pods])))
    seen: set[str] = set()
    for _ in range(200):
        batch: list[dict[str, Any]] = node.client(client, "tcp-client", VIP, "80", "10")  # type: ignore[assignment]
        seen |= {r.get("backend", "") for r in batch}
        if "b3" in seen:
            break
    assert "b3" in seen

    stop.touch()
    out, _ = loop.communicate(timeout=60)
    report = json.loads(out)
    assert report["errors"] == {}
    assert hold.stdin is not None
    hold.stdin.write("ping\n")
    hold.stdin.flush()
    assert "backend" in json.loads(hold.stdout.readline())
    stop_agent(agent)

    # Cleanup needs no more privilege than running did.
    gone = subprocess.run(
        [*LEAST, *agent_argv(node, "cleanup")], capture_output=True, text=True, timeout=120
    )
    assert gone.returncode == 0, gone.stderr
    assert not node.pin_dir.exists()


def test_agent_without_cap_bpf_refuses_clearly(node: MeshNode) -> None:
    no_bpf = ["setpriv", "--bounding-set=-all,+net_admin", "--inh-caps=-all", "--"]
    proc = subprocess.run(
        [*no_bpf, *agent_argv(node, "datapath")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "lacks CAP_BPF" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (node.pin_dir / "maps").exists()
