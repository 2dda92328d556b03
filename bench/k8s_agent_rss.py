"""RSS of the whole node agent in Kubernetes mode, datapath included (root).

    sudo .venv/bin/python -m bench.k8s_agent_rss [--services 5000] [--endpoints 10]

bench/k8s_sync.py measures the watcher and the xDS control plane; this runs
the shipped `nodemesh agent --kubernetes` (watcher, xDS server for the node
Envoy, eBPF datapath) against the API server double serving the same
cluster, and reads its VmRSS and VmHWM (peak) from /proc. Two columns, each
a fresh agent: the whole kubernetes-asyncio package imported first (the
agent before nodemesh.k8s_watch.kube_core), and the agent as it is.

The agent's programs attach to a cgroup this script creates and no process
joins, and pin in a private bpffs: nothing on the host is steered. Only
loopback and a Unix socket carry traffic. Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.k8s_sync import ROOT, free_port, proc_status_mib, start_double
from nodemesh.ebpf.loader import cgroup2_mount

FULL_CLIENT = (
    "import kubernetes_asyncio, runpy; runpy.run_module('nodemesh.cmd.main', run_name='__main__')"
)


@contextmanager
def private_node() -> Iterator[tuple[Path, Path]]:
    """A mesh cgroup (with proxy and pods children) and a private bpffs."""
    cgroup = cgroup2_mount() / f"nmbench{os.getpid()}"
    dirs = [cgroup / "mesh", cgroup / "mesh" / "proxy", cgroup / "mesh" / "pods"]
    for d in dirs:
        d.mkdir(parents=True)
    bpffs = Path(tempfile.mkdtemp(prefix="nmbench-bpffs-"))
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    try:
        yield cgroup / "mesh", bpffs / "nodemesh"
    finally:
        subprocess.run(["umount", str(bpffs)], check=False)
        bpffs.rmdir()
        for d in [*reversed(dirs), cgroup]:
            d.rmdir()


def agent_run(full: bool, url: str, seconds: float) -> tuple[float, float, float]:
    """(seconds to the first plan applied with the cluster, VmRSS, VmHWM)."""
    with private_node() as (mesh, pins), tempfile.TemporaryDirectory() as tmp:
        common = [
            f"--pin-dir={pins}", f"--cgroup={mesh}", f"--proxy-cgroup={mesh / 'proxy'}",
        ]  # fmt: skip
        args = [
            "agent", "run", *common, "--proxy-address=169.254.77.1",
            f"--pod-cgroups={mesh / 'pods'}", "--node-name=node-a", "--kubernetes",
            f"--k8s-server={url}", "--no-report-status", f"--xds-socket={tmp}/xds.sock",
            f"--admin=127.0.0.1:{free_port()}", "--envoy-sync-timeout=1",
        ]  # fmt: skip
        head = ["-c", FULL_CLIENT] if full else ["-m", "nodemesh.cmd.main"]
        log = Path(tmp) / "agent.log"
        started = time.perf_counter()
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, *head, *args], cwd=ROOT, stdout=out, stderr=out
            )
        try:
            while not _applied(log):
                if proc.poll() is not None or time.perf_counter() - started > 300:
                    raise SystemExit(f"agent did not apply a plan:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)
            applied = time.perf_counter() - started
            time.sleep(seconds)
            return applied, proc_status_mib(proc.pid, "VmRSS"), proc_status_mib(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            proc.wait(60)
            cleanup = [sys.executable, "-m", "nodemesh.cmd.main", "agent", "cleanup", *common]
            subprocess.run(cleanup, cwd=ROOT, capture_output=True, check=False)


def _applied(log: Path) -> bool:
    """Whether a plan with the cluster's frontends was written to the maps."""
    events = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
    return any(e["event"] == "plan_applied" and e.get("writes", 0) > 0 for e in events)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after the plan")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (bpffs, cgroups, BPF programs)")
    proc, url = start_double(args.services, args.endpoints)
    try:
        runs = {full: agent_run(full, url, args.settle) for full in (True, False)}
    finally:
        proc.terminate()
        proc.wait(10)
    print(
        f"cluster: {args.services} Services, {args.services * args.endpoints} endpoints; "
        "nodemesh agent --kubernetes (watcher, xDS, eBPF datapath), measured from outside"
    )
    print(f"{'measure':<44}{'full client':>14}{'kube_core':>12}{'target':>10}")
    labels = (
        "start to first plan applied (s)",
        f"VmRSS {args.settle:g} s later (MiB)",
        "VmHWM, peak (MiB)",
    )
    for i, label in enumerate(labels):
        fmt = "{:.2f}" if i == 0 else "{:.1f}"
        full, lean = (fmt.format(runs[mode][i]) for mode in (True, False))
        print(f"{label:<44}{full:>14}{lean:>12}{'' if i == 0 else '<= 150':>10}")


if __name__ == "__main__":
    main()
