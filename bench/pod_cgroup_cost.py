"""What matching pods and the proxy by cgroup ancestry costs, in one run.

    sudo .venv/bin/python -m bench.pod_cgroup_cost [--rounds 5] [--connects 2000] [--sockopt-only]
    sudo .venv/bin/python -m bench.pod_cgroup_cost --vs-single-proxy --connects-only

`--vs-single-proxy` makes the "old" column the walk before the proxy set
(SINGLE_PROXY_COMMIT: one proxy id compared at each level) and keys both
columns by pod cgroup; the new code then has two Envoy pods in
`nm_proxies_v1` (a surge rollout), so each level of the walk does one hash
lookup there.

Side by side, on one node of network namespaces (integration/datapath/node.py):

- `nm_connect4` of the code before the change (keyed by the leaf cgroup,
  compiled from git at OLD_COMMIT) against the current code (walks the
  ancestry up to the pod cgroup), each attached to a mesh cgroup of its own,
  for a client in a shallow pod cgroup (`<mesh>/<ns>_<name>`) and in a
  kubelet-shaped container scope (4 levels below the mesh cgroup), and for
  three destinations: not a VIP, a VIP translated, a VIP steered to a proxy
  (a CNP-style redirect for that client's pod).
- `nm_getsockopt`: the wall time of a pod's getsockopt(SO_ERROR),
  getsockopt(TCP_INFO) and getsockopt(SOL_IP, SO_ORIGINAL_DST), and the
  program's own time, for a pod in a mesh cgroup with no getsockopt program
  at all ("pod, no hook"), with the program linked to the mesh cgroup (as
  5551bda did, to survive Envoy restarts: "pod, hook at mesh root"), and as
  the agent links it now, to the proxy's cgroup only ("pod, proxy-only
  hook"); and the proxy's own calls, which do run it.

Program times are mean `run_time_ns` per run with kernel.bpf_stats_enabled=1
(which itself adds ~100 ns per run, to every cell alike). Each cell is the
median over rounds of that cell's mean; cells are interleaved per round.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.datapath_measure import bpf_stats, bpftool_json, hook_counters, hook_delta
from bench.old_datapath import load_revision
from integration.datapath.node import NODE_IP, PROBE, MeshNode
from integration.datapath.plans import frontend, plan, redirect
from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, libbpf, loader
from nodemesh.model.objects import Pod

OLD_COMMIT = "46c8950"  # the last commit with leaf-keyed redirects
SINGLE_PROXY_COMMIT = "dbde26c"  # the last commit with one proxy cgroup id
VIP, STEERED_VIP, PROXY_PORT = "10.96.0.10", "10.96.0.20", 15001
CLIENT = "default/client"

SOCKOPT_LOOP = """
import json, socket, sys, time
n, host, option = int(sys.argv[1]), sys.argv[2], sys.argv[3]
level, opt, size = {"SO_ERROR": (socket.SOL_SOCKET, socket.SO_ERROR, 4),
                    "TCP_INFO": (socket.IPPROTO_TCP, socket.TCP_INFO, 104),
                    "SO_ORIGINAL_DST": (socket.SOL_IP, 80, 16)}[option]
s = socket.create_connection((host, 8080))
t = time.perf_counter_ns()
for _ in range(n):
    try:
        s.getsockopt(level, opt, size)
    except OSError:
        pass
print((time.perf_counter_ns() - t) / n, flush=True)
"""
OPTIONS = ("SO_ERROR", "TCP_INFO", "SO_ORIGINAL_DST")
DESTS = ("not a VIP", "VIP translated", "VIP steered")


class FixedPodCgroups:
    """Pods keyed by a given cgroup (the old code: the process's own)."""

    def __init__(self, root: Path, ids: dict[str, int]) -> None:
        self.root = root
        self.ids = ids

    def observe(self, pods: Iterable[Pod]) -> None:
        pass

    def cgroup_id(self, pod: str) -> int | None:
        return self.ids.get(pod)


def getsockopt_stats(config: loader.DatapathConfig) -> tuple[int, int]:
    """(run_cnt, run_time_ns) of the agent's pinned nm_getsockopt, wherever linked."""
    pin = config.progs_dir / loader.PROXY_PROGRAM
    info = bpftool_json("prog", "show", "pinned", str(pin))
    assert isinstance(info, dict)
    return int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0))


@contextmanager
def mesh_root_link(config: loader.DatapathConfig) -> Iterator[None]:
    """nm_getsockopt linked to the whole mesh cgroup while inside (unpinned:
    closing the link's only fd detaches it)."""
    lib = libbpf.lib()
    pin = config.progs_dir / loader.PROXY_PROGRAM
    prog_fd = libbpf.check(lib.bpf_obj_get(str(pin).encode()), "open nm_getsockopt")
    cg_fd = os.open(config.cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        link_fd = libbpf.check(
            lib.bpf_link_create(prog_fd, cg_fd, loader.BPF_CGROUP_GETSOCKOPT, None),
            "link nm_getsockopt to the mesh cgroup",
        )
    finally:
        os.close(cg_fd)
        os.close(prog_fd)
    try:
        yield
    finally:
        os.close(link_fd)


def kubelet_scope(mesh: Path) -> Path:
    escaped = str(uuid.uuid4()).replace("-", "_")
    scope = (
        mesh
        / "kubepods.slice"
        / "kubepods-burstable.slice"
        / f"kubepods-burstable-pod{escaped}.slice"
        / f"cri-containerd-{secrets.token_hex(32)}.scope"
    )
    scope.mkdir(parents=True)
    return scope


def load_old(node: MeshNode, mesh: Path, workdir: Path, commit: str) -> loader.DatapathConfig:
    """The old nm_sock object, compiled from git, on `mesh` with its own pins."""
    config = loader.DatapathConfig(pin_dir=node.bpffs / "old", cgroup=mesh)
    load_revision(commit, config, workdir, objects=("nm_sock",))
    return config


@dataclass
class Bench:
    node: MeshNode
    netns: str
    b1_ip: str
    clients: dict[tuple[str, str], Path]
    proxy: Path
    plan: pb.DatapathPlan
    configs: dict[str, loader.DatapathConfig]
    old_by_ancestry: bool = False

    def key_redirect(self, code: str, layout: str) -> None:
        """The redirect for this cell's client, keyed as each code keys it."""
        config, cg = self.configs[code], self.clients[(code, layout)]
        if code == "new" or self.old_by_ancestry:
            # Pods sit below the mesh (shallow) or below kubepods.slice.
            anchor = config.cgroup if layout == "shallow" else config.cgroup / "kubepods.slice"
            config = dataclasses.replace(config, pod_cgroups=anchor)
            loader.write_config(config)
            cg = cg if layout == "shallow" else cg.parent
        pods = FixedPodCgroups(config.cgroup, {CLIENT: os.stat(cg).st_ino})
        applier.apply(self.plan, config.maps_dir, NODE_IP, pods)

    def connects(self, code: str, layout: str, dest: str, n: int) -> float:
        host, port = {
            DESTS[0]: (self.b1_ip, 8080),
            DESTS[1]: (VIP, 80),
            DESTS[2]: (STEERED_VIP, 80),
        }[dest]
        mesh = self.configs[code].cgroup
        before = hook_counters([mesh])
        argv = [sys.executable, str(PROBE), "connect-bench", host, str(port), str(n)]
        proc = self.node.spawn(argv, self.clients[(code, layout)], self.netns)
        proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"connect-bench {dest} failed ({code}, {layout})")
        return hook_delta(before, hook_counters([mesh]))["nm_connect4"][1]

    def sockopts(self, cgroup: Path, netns: str, option: str, n: int) -> tuple[float, float]:
        """(wall ns per getsockopt call, nm_getsockopt ns per run or 0)."""
        (runs0, ns0) = getsockopt_stats(self.configs["new"])
        argv = [sys.executable, "-c", SOCKOPT_LOOP, str(n), self.b1_ip, option]
        out, _ = self.node.spawn(argv, cgroup, netns).communicate(timeout=600)
        (runs1, ns1) = getsockopt_stats(self.configs["new"])
        return float(out), (ns1 - ns0) / (runs1 - runs0) if runs1 > runs0 else 0.0

    def sockopt_cells(self, option: str, n: int) -> Iterator[tuple[str, float, float]]:
        """One round of the getsockopt cells: (who, wall ns, program ns)."""
        pod, netns = self.clients[("new", "kubelet")], self.netns
        yield ("pod, no hook", *self.sockopts(self.clients[("old", "kubelet")], netns, option, n))
        with mesh_root_link(self.configs["new"]):
            yield ("pod, hook at mesh root", *self.sockopts(pod, netns, option, n))
        yield ("pod, proxy-only hook", *self.sockopts(pod, netns, option, n))
        yield ("proxy", *self.sockopts(self.proxy, self.node.netns, option, n))


def setup(node: MeshNode, workdir: Path, single_proxy: bool = False) -> Bench:
    client = node.add_pod("default", "client")
    b1 = node.add_pod("default", "b1")
    # connect-bench resets every connection; the servers' complaints are noise.
    quiet = {"stderr": subprocess.DEVNULL}
    for argv, cgroup, netns in (
        (["tcp-server", "8080", "b1"], b1.cgroup, b1.netns),
        (["tcp-server", str(PROXY_PORT), "proxy"], node.outside, node.netns),
    ):
        server = node.spawn([sys.executable, str(PROBE), *argv], cgroup, netns, **quiet)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    new_mesh, old_mesh = node.mesh, node.cgroup_root / "mesh-old"
    old_mesh.mkdir()
    clients = {
        ("new", "shallow"): new_mesh / "default_client",
        ("new", "kubelet"): kubelet_scope(new_mesh),
        ("old", "shallow"): old_mesh / "default_client",
        ("old", "kubelet"): kubelet_scope(old_mesh),
    }
    clients[("old", "shallow")].mkdir()
    proxy = kubelet_scope(new_mesh)
    fe = frontend(VIP, 80, pb.TCP, [(b1.ip, 8080)], service="default/a")
    fe2 = frontend(STEERED_VIP, 80, pb.TCP, [(b1.ip, 8080)], service="default/b")
    new = loader.DatapathConfig(pin_dir=node.pin_dir, cgroup=new_mesh, proxy_cgroup=proxy.parent)
    loader.load(new)
    old = load_old(node, old_mesh, workdir, SINGLE_PROXY_COMMIT if single_proxy else OLD_COMMIT)
    if single_proxy:
        # Two Envoy pods of a surge rollout in the set (neither the client's).
        for scope in (kubelet_scope(new_mesh), kubelet_scope(new_mesh)):
            loader.add_proxy(new.maps_dir, os.stat(scope.parent).st_ino)
        loader.write_config(dataclasses.replace(old, proxy_cgroup=proxy.parent))
    the_plan = plan(fe, fe2, redirects=(redirect(fe2, PROXY_PORT, [CLIENT]),))
    configs = {"new": new, "old": old}
    return Bench(node, client.netns, b1.ip, clients, proxy, the_plan, configs, single_proxy)


WHOS = ("pod, no hook", "pod, hook at mesh root", "pod, proxy-only hook", "proxy")


def run(bench: Bench, rounds: int, n_connect: int, n_sockopt: int) -> None:
    connect: dict[tuple[str, str, str], list[float]] = {}
    wall: dict[tuple[str, str], list[float]] = {}
    prog: dict[tuple[str, str], list[float]] = {}
    with bpf_stats():
        for _ in range(rounds):
            for layout in ("shallow", "kubelet") if n_connect else ():
                for code in ("old", "new"):
                    bench.key_redirect(code, layout)
                    for dest in DESTS:
                        ns = bench.connects(code, layout, dest, n_connect)
                        connect.setdefault((layout, code, dest), []).append(ns)
            for option in OPTIONS if n_sockopt else ():
                for who, w, p in bench.sockopt_cells(option, n_sockopt):
                    wall.setdefault((option, who), []).append(w)
                    prog.setdefault((option, who), []).append(p)
    report(connect, wall, prog, rounds, n_connect, n_sockopt)


def report(
    connect: dict[tuple[str, str, str], list[float]],
    wall: dict[tuple[str, str], list[float]],
    prog: dict[tuple[str, str], list[float]],
    rounds: int,
    n_connect: int,
    n_sockopt: int,
) -> None:
    med = statistics.median
    if connect:
        print(f"nm_connect4 ns per run (median of {rounds} rounds x {n_connect} connects)")
        print(f"{'client':<9} {'destination':<15} {'old':>10} {'new':>14}  added (per round)")
    for layout in ("shallow", "kubelet") if connect else ():
        for dest in DESTS:
            olds, news = connect[(layout, "old", dest)], connect[(layout, "new", dest)]
            cells = f"{med(olds):>10.0f} {med(news):>14.0f}"
            print(f"{layout:<9} {dest:<15} {cells}  {paired(news, olds)}")
    if not wall:
        return
    print(f"\ngetsockopt() ns per call, wall / nm_getsockopt (median of {rounds} x {n_sockopt})")
    print(f"{'option':<16} " + " ".join(f"{w:>22}" for w in WHOS))
    for option in OPTIONS:
        row = " ".join(
            f"{med(wall[(option, w)]):.0f} / {med(prog[(option, w)]):.0f}".rjust(22) for w in WHOS
        )
        print(f"{option:<16} {row}")
    print("\npod's wall ns per call added over no hook, median [min..max] of per-round differences")
    for option in OPTIONS:
        base = wall[(option, WHOS[0])]
        added = "   ".join(f"{w}: {paired(wall[(option, w)], base)}" for w in WHOS[1:3])
        print(f"{option:<16} {added}")


def paired(new: list[float], old: list[float]) -> str:
    """Median [min..max] of the per-round differences (cells of a round are
    adjacent in time, so load drift cancels better than in a difference of medians)."""
    diffs = sorted(n - o for n, o in zip(new, old, strict=True))
    return f"{statistics.median(diffs):+.0f} [{diffs[0]:+.0f}..{diffs[-1]:+.0f}]"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connects", type=int, default=2000)
    ap.add_argument("--sockopts", type=int, default=100000)
    ap.add_argument("--sockopt-only", action="store_true", help="skip the connect4 table")
    ap.add_argument("--connects-only", action="store_true", help="skip the getsockopt table")
    ap.add_argument(
        "--vs-single-proxy",
        action="store_true",
        help=f"old = {SINGLE_PROXY_COMMIT} (one proxy id), new with two pods in the proxy set",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (netns, cgroups, BPF)")
    workdir = Path(tempfile.mkdtemp(prefix="nm-pcc-"))
    node = MeshNode(workdir)
    try:
        node.setup()
        connects = 0 if args.sockopt_only else args.connects
        sockopts = 0 if args.connects_only else args.sockopts
        run(setup(node, workdir, args.vs_single_proxy), args.rounds, connects, sockopts)
    finally:
        loader.cleanup(node.config())
        loader.cleanup(loader.DatapathConfig(pin_dir=node.bpffs / "old", cgroup=node.mesh))
        node.teardown()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
