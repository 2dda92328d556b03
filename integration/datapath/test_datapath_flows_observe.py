"""Service events through the node agent to `nodemesh observe`, as an operator
sees them: plain L4 connects are "translated" flows from the client pod
(found by its cgroup: connect() has no source address yet) to the backend
pod, and a connect to a Service with no backends is a DROPPED "no-backend"
flow whose summary and drop reason say why. The agent's admin port serves
the live service map too (/map/), with those edges.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import factory
from tests.support.polling import wait_until

from .node import MeshNode, Pod, wait_agent_ready
from .test_datapath_agent import LEAST, agent_argv
from .test_datapath_canary import _observe, _pod, _service, _slice

pytestmark = pytest.mark.privileged

VIP, EMPTY_VIP = "10.96.0.10", "10.96.0.30"
ADMIN = 19934


def _write_model(directory: Path, client: Pod, web: Pod) -> None:
    directory.mkdir()
    empty_slice = factory.endpoint_slice(
        "empty", [], name="empty-test", ports=[factory.port(80, name="", protocol="TCP")]
    )
    docs = [
        _service("web", VIP, {"app": "web"}),
        _service("empty", EMPTY_VIP, {"app": "nothing"}),
        _slice("web", [web]),
        empty_slice,
        _pod(client, {"app": "client"}),
        _pod(web, {"app": "web"}),
    ]
    (directory / "node.yaml").write_text(yaml.safe_dump_all(docs))


def _start_agent(node: MeshNode, workdir: Path, model: Path) -> None:
    agent = subprocess.Popen(
        [
            *LEAST,
            *agent_argv(
                node,
                "run",
                f"--model-dir={model}",
                "--node-name=node-a",
                f"--xds-socket={workdir / 'xds.sock'}",
                f"--admin=127.0.0.1:{ADMIN}",
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    node.procs.append(agent)
    wait_agent_ready(agent)


def _table(observer: Path, *args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "nodemesh.cmd.main", "observe", f"--server=unix:{observer}", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return out.splitlines()


def test_observe_shows_translations_and_refusals_with_the_reason(
    node: MeshNode, workdir: Path
) -> None:
    client, web = node.add_pod("default", "client"), node.add_pod("default", "web")
    node.server(web, "tcp-server", "80", "web")
    _write_model(workdir / "model", client, web)
    _start_agent(node, workdir, workdir / "model")
    observer = workdir / "observer.sock"

    # Until the agent has applied the model, the VIP is not translated.
    wait_until(
        lambda: "error" not in node.client(client, "tcp-client", VIP, "80", "1")[0],  # type: ignore[index]
        what="the web Service translated",
    )
    ok: list[dict[str, Any]] = node.client(client, "tcp-client", VIP, "80", "3")  # type: ignore[assignment]
    assert {r.get("backend") for r in ok} == {"web"}
    refused: list[dict[str, Any]] = node.client(client, "tcp-client", EMPTY_VIP, "80", "2")  # type: ignore[assignment]
    assert {r.get("error") for r in refused} == {"ECONNREFUSED"}

    def kernel_flows() -> list[dict[str, Any]]:
        return _observe(observer, "-t", "l3-l4", "--from-pod", "default/client")

    wait_until(
        lambda: sum(f.get("kernel_event") == "NO_BACKEND" for f in kernel_flows()) == 2,
        what="two no-backend flows from the client pod",
    )
    flows = kernel_flows()
    translated = [f for f in flows if f.get("kernel_event") == "TRANSLATION"]
    assert len(translated) >= 3
    assert {f["destination"]["pod_name"] for f in translated} == {"web"}
    assert {f["destination_service"]["name"] for f in translated} == {"web"}
    drops = [f for f in flows if f.get("kernel_event") == "NO_BACKEND"]
    assert {(f["verdict"], f["drop_reason_desc"]) for f in drops} == {("DROPPED", "NO_SERVICE")}
    assert {f["destination_service"]["name"] for f in drops} == {"empty"}

    rows = [r for r in _table(observer, "--from-pod", "default/client") if "no-backend" in r]
    assert len(rows) == 2
    for row in rows:
        assert "default/client" in row and "DROPPED" in row, row
        assert row.endswith(
            f"TCP {EMPTY_VIP}:80 (default/empty) refused: the Service has no backends"
        )


def _get(path: str) -> tuple[str, bytes]:
    """GET on the agent's admin port (loopback in this namespace): final URL, body."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}{path}", timeout=30) as reply:
        return reply.geturl(), reply.read()


def test_the_admin_port_serves_the_service_map(node: MeshNode, workdir: Path) -> None:
    client, web = node.add_pod("default", "client"), node.add_pod("default", "web")
    node.server(web, "tcp-server", "80", "web")
    _write_model(workdir / "model", client, web)
    _start_agent(node, workdir, workdir / "model")
    wait_until(
        lambda: "error" not in node.client(client, "tcp-client", VIP, "80", "1")[0],  # type: ignore[index]
        what="the web Service translated",
    )
    node.client(client, "tcp-client", EMPTY_VIP, "80", "1")

    url, page = _get("/map")
    assert url.endswith("/map/") and b'<script src="app.js">' in page
    assert b"EventSource" in _get("/map/app.js")[1]

    def edges() -> dict[tuple[str, str], dict[str, Any]]:
        graph = json.loads(_get("/map/api/graph")[1])
        return {(e["source"], e["destination"]): e for e in graph["edges"]}

    def shown() -> bool:
        now = edges()
        mine = [e for (source, _), e in now.items() if source == "default/client"]
        return ("default/client", "default/web") in now and any(e["denied"] for e in mine)

    # The translated connects, and the refused one as a denied (red) edge.
    wait_until(shown, what="the client's edges on the admin port's map")
