"""Policy across agent restarts and live changes, under traffic.

The real agent CLI runs with only CAP_BPF and CAP_NET_ADMIN, follows a
model directory, and is stopped and started again while an allowed and a
denied connect loop run: the pinned maps keep enforcing with no agent at
all, so no allowed connect fails and no denied one gets through, and the
restarted agent writes nothing for the unchanged model. A live change then
denies the allowed client: its new connects are dropped while a
connection it opened before the change keeps working (policy judges
connection setup; established connections are not cut).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import Datapath
from .node import MeshNode
from .policy_world import PolicyWorld
from .test_datapath_agent import ANSI, LEAST, agent_argv

pytestmark = pytest.mark.privileged

HELD_PORT = 9090


def db_policy(allow_api: bool) -> dict[str, Any]:
    rules = [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}] if allow_api else []
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "db", "namespace": "prod"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": rules},
    }


def start(
    node: MeshNode, world: PolicyWorld, model: Path
) -> tuple[subprocess.Popen[str], list[str]]:
    hosts = [f"--host-ip={ip}" for ip in world.host_ips()]
    argv = agent_argv(
        node,
        "datapath",
        f"--model-dir={model}",
        f"--pod-cgroups={node.mesh}",
        "--node-name=node-1",
        *hosts,
        "--watch",
    )
    proc = subprocess.Popen(
        [*LEAST, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    node.procs.append(proc)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(ANSI.sub("", line.rstrip()))
        if line.strip() == "agent ready":
            return proc, lines
    raise AssertionError("agent exited before ready:\n" + "\n".join(lines))


def stop(proc: subprocess.Popen[str], lines: list[str]) -> list[str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return lines + [ANSI.sub("", line) for line in out.splitlines()]


def applied(lines: list[str]) -> list[dict[str, int]]:
    """The writes/deletes of each 'policy applied' log line."""
    found = []
    for line in lines:
        if "policy applied" in line:
            # JSON lines ("writes": 3) or the console's writes=3.
            nums = dict(re.findall(r'"?(writes|deletes)"?[=:] ?(\d+)', line))
            found.append({k: int(v) for k, v in nums.items()})
    return found


def wait_until(check: Any, what: str) -> None:
    for _ in range(300):
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


def test_restart_and_live_change_under_traffic(
    node: MeshNode, datapath: Datapath, workdir: Path
) -> None:
    world = PolicyWorld(node)
    world.build()
    api, web, db = world.pod("prod/api"), world.pod("prod/web-1"), world.pod("prod/db")
    node.server(db, "tcp-server", str(HELD_PORT), "db")
    model = workdir / "model"
    world.write_model(model, db_policy(allow_api=True))

    first, lines = start(node, world, model)
    wait_until(
        lambda: world.try_from(web, [(db.ip, 8080, "tcp")]) == ["timeout"], "policy enforced"
    )
    stop_file = workdir / "stop"
    allowed = world.loop(api, db, 8080, stop_file)
    denied = world.loop(web, db, 8080, stop_file)
    first_lines = stop(first, lines)
    time.sleep(1.0)  # no agent at all: the pins enforce alone
    second, lines = start(node, world, model)
    time.sleep(1.0)
    stop_file.write_text("")
    counts = [json.loads(p.communicate(timeout=60)[0]) for p in (allowed, denied)]
    assert set(counts[0]) == {"ok"}, counts  # never refused across the restart
    assert "ok" not in counts[1] and counts[1], counts  # never let through
    # The restarted agent found everything in place: it wrote nothing.
    assert applied(first_lines)[0]["writes"] > 0
    held = node.probe(api, "tcp-hold", db.ip, str(HELD_PORT))
    assert held.stdout is not None and held.stdin is not None
    assert json.loads(held.stdout.readline())["backend"] == "db"

    # Live change: api is denied from now on.
    world.write_model(model, db_policy(allow_api=False))
    wait_until(lambda: world.try_from(api, [(db.ip, 8080, "tcp")]) == ["timeout"], "change applied")
    held.stdin.write("ping\n")
    held.stdin.flush()
    assert json.loads(held.stdout.readline())["backend"] == "db"  # established: not cut
    second_lines = stop(second, lines)
    assert applied(second_lines)[0] == {"writes": 0, "deletes": 0}
