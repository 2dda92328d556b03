"""A test "node" built from network namespaces and cgroups, torn down whole.

Layout (TAG is random per node, so parallel or crashed runs never collide):

    netns nmTAGn  the node: lo carries NODE_IP (where Envoy listens), forwards
                  between pods; no uplink, nothing leaves it
    netns nmTAGpI pod I: eth0 = POD_NET.I.2/24, default route via .1 (node side)
    <cgroup2>/nmTAG/mesh/            the mesh cgroup (hooks attach here)
    <cgroup2>/nmTAG/mesh/<ns>_<name> one per pod
    <cgroup2>/nmTAG/mesh/proxy       Envoy's
    <cgroup2>/nmTAG/outside          a process outside the mesh
    /tmp/nmTAG-bpffs-*               a private bpffs for the pins

All netlink work goes through pyroute2.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns

from nodemesh.ebpf.loader import DatapathConfig, cgroup2_mount

CGROUP2 = cgroup2_mount()  # /sys/fs/cgroup/unified here (hybrid); /sys/fs/cgroup if unified
HERE = Path(__file__).parent
LAUNCHER = HERE / "launcher.py"
PROBE = HERE / "probe.py"
NODE_IP = "10.0.0.1"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ip: str
    netns: str
    cgroup: Path

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def wait_agent_ready(agent: subprocess.Popen[str]) -> None:
    """Until a `nodemesh agent` started with stdout piped (text, stderr
    merged) says "agent ready"; if it exits first, fail with what it said."""
    assert agent.stdout is not None
    said: list[str] = []
    while (line := agent.stdout.readline()) and line.strip() != "agent ready":
        said.append(line)
    assert line, "agent exited before ready: " + "".join(said[-10:])


def sysctl_in(ns: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    script = f"open({path!r}, 'w').write({value!r})"
    cmd = [sys.executable, str(LAUNCHER), "", ns, "--", sys.executable, "-c", script]
    subprocess.run(cmd, check=True, timeout=30)


class MeshNode:
    def __init__(self, workdir: Path) -> None:
        self.tag = secrets.token_hex(2)
        self.workdir = workdir
        self.netns = f"nm{self.tag}n"
        self.cgroup_root = CGROUP2 / f"nm{self.tag}"
        self.mesh = self.cgroup_root / "mesh"
        self.proxy_cgroup = self.mesh / "proxy"
        self.outside = self.cgroup_root / "outside"
        # Not under workdir: concurrent pytest sessions may rename old basetemp
        # dirs (to garbage-*) while we run, and a moved mount point would leak.
        self.bpffs = Path(tempfile.mkdtemp(prefix=f"nm{self.tag}-bpffs-"))
        self.pin_dir = self.bpffs / "nodemesh"
        self.pods: dict[str, Pod] = {}
        self.procs: list[subprocess.Popen[str]] = []

    def config(self) -> DatapathConfig:
        return DatapathConfig(
            pin_dir=self.pin_dir, cgroup=self.mesh, proxy_cgroup=self.proxy_cgroup
        )

    # -- building ---------------------------------------------------------
    def setup(self) -> None:
        for d in (self.mesh, self.proxy_cgroup, self.outside):
            d.mkdir(parents=True, exist_ok=True)
        self.bpffs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", str(self.bpffs)], check=True)
        netns.create(self.netns)
        with IPRoute(netns=self.netns) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            ipr.addr("add", index=lo, address=NODE_IP, prefixlen=32)
        sysctl_in(self.netns, "net.ipv4.ip_forward", "1")

    def add_pod(self, namespace: str, name: str) -> Pod:
        index = len(self.pods) + 1
        pod = Pod(
            namespace,
            name,
            ip=f"10.0.{index}.2",
            netns=f"nm{self.tag}p{index}",
            cgroup=self.mesh / f"{namespace}_{name}",
        )
        pod.cgroup.mkdir(exist_ok=True)
        # Registered before anything can fail, so teardown finds it.
        self.pods[pod.key] = pod
        netns.create(pod.netns)
        host_if, pod_if = f"nm{self.tag}h{index}", f"nm{self.tag}c{index}"
        with IPRoute(netns=self.netns) as ipr:
            ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": pod_if})
            peer = ipr.link_lookup(ifname=pod_if)[0]
            ipr.link("set", index=peer, net_ns_fd=f"/var/run/netns/{pod.netns}")
            host = ipr.link_lookup(ifname=host_if)[0]
            ipr.addr("add", index=host, address=f"10.0.{index}.1", prefixlen=24)
            ipr.link("set", index=host, state="up")
        with IPRoute(netns=pod.netns) as ipr:
            for ifname in ("lo", pod_if):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
            dev = ipr.link_lookup(ifname=pod_if)[0]
            ipr.addr("add", index=dev, address=pod.ip, prefixlen=24)
            ipr.route("add", dst="0.0.0.0/0", gateway=f"10.0.{index}.1")
        return pod

    # -- processes ----------------------------------------------------------
    def spawn(
        self, argv: Sequence[str], cgroup: Path | None, ns: str, **kw: object
    ) -> subprocess.Popen[str]:
        cmd = [sys.executable, str(LAUNCHER), str(cgroup or ""), ns, "--", *argv]
        opts: dict[str, object] = {"stdout": subprocess.PIPE, "stdin": subprocess.PIPE, **kw}
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            cmd, text=True, start_new_session=True, **opts
        )
        self.procs.append(proc)
        return proc

    def probe(
        self, pod: Pod | None, *args: str, cgroup: Path | None = None
    ) -> subprocess.Popen[str]:
        where_cg = cgroup if pod is None else pod.cgroup
        where_ns = self.netns if pod is None else pod.netns
        return self.spawn([sys.executable, str(PROBE), *args], where_cg, where_ns)

    def server(
        self, pod: Pod | None, *args: str, cgroup: Path | None = None
    ) -> subprocess.Popen[str]:
        proc = self.probe(pod, *args, cgroup=cgroup)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "ready", f"server {args} did not start: {line!r}"
        return proc

    def client(self, pod: Pod | None, *args: str, cgroup: Path | None = None) -> object:
        proc = self.probe(pod, *args, cgroup=cgroup)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"client {args} failed"
        return json.loads(out)

    # -- teardown -----------------------------------------------------------
    def _stop_procs(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:  # not a group leader (started elsewhere)
                    proc.kill()
            # cgroup.kill in teardown gets whatever is left in our cgroups.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)

    def teardown(self) -> None:
        self._stop_procs()
        kill = self.cgroup_root / "cgroup.kill"
        if kill.exists():
            kill.write_text("1")  # anything our processes forked, in any pod cgroup
        for pod in self.pods.values():
            if pod.netns in netns.listnetns():
                netns.remove(pod.netns)
        if self.netns in netns.listnetns():
            netns.remove(self.netns)
        if self.bpffs.is_mount():
            subprocess.run(["umount", str(self.bpffs)], check=False)
        with contextlib.suppress(OSError):
            self.bpffs.rmdir()
        # Children first; rmdir succeeds once the killed processes are reaped.
        dirs = sorted(self.cgroup_root.rglob("*"), key=lambda p: -len(p.parts))
        for d in [p for p in dirs if p.is_dir()] + [self.cgroup_root]:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
