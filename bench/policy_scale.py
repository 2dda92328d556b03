"""bench/policy.py parts 3 and 4: policy at scale, and the kernel path with
and without it. Run through `python -m bench.policy --part 3|4`."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.datapath_measure import bpftool_json, map_memlock
from bench.policy import (
    IDENTITIES,
    POLICIES,
    VIP_POLICED,
    Bench,
    knp,
    pod,
    synthetic_ip,
)
from nodemesh.ebpf import policy_apply, policy_plan
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore

# connect + the server's first reply + close, n times: one request with
# keep-alive off, through the kernel path (the VIP, translated at connect).
REQUEST_LOOP = """
import json, socket, sys, time
n, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
samples = []
for _ in range(n):
    t = time.perf_counter_ns()
    s = socket.create_connection((host, port))
    s.recv(4096)
    s.close()
    samples.append((time.perf_counter_ns() - t) / 1000)
samples.sort()
print(json.dumps({"p50": samples[n // 2], "p99": samples[int(n * 0.99)]}))
"""
TARGET = 1.05


def first_apply(bench: Bench, scale: MeshModel) -> None:
    timing = bench.set_policy(scale)
    compiled = policy_plan.plan(scale, "node-1", bench.host_ips)
    print(
        f"\n3. {POLICIES} policies x {IDENTITIES} identities: "
        f"{len(compiled.entries)} policy entries, {len(compiled.ipcache)} ipcache entries; "
        f"first apply: compile {timing['compile_s']:.2f} s, write {timing['write_s']:.2f} s"
    )
    print(
        f"   pinned map memory (memlock, all maps): {map_memlock(bench.node.pin_dir) // 1024} KiB"
    )


def relabel(bench: Bench, pods: int = 5_000, policies: int = 100) -> None:
    """Memory and one pod relabelled at `pods` pods x `policies` policies,
    with every pod on this node (the worst case: 5,000 endpoints) and with
    100 on this node (a kubelet's default max-pods is 110)."""
    for local in (pods, 100):
        store = MeshStore()
        for i in range(pods):
            node = "node-1" if i < local else f"node-{2 + i % 49}"
            store.apply("b", pod(f"p{i}", synthetic_ip(i), f"a{i % 500}", node))
        for j in range(policies):
            peers = [f"a{(j * 7 + k) % 500}" for k in range(10)]
            store.apply("b", knp(j, f"a{j % 500}", peers, 80, egress=True))
        model = store.build()
        bench.set_policy(model)
        if local == pods:
            compiled = policy_plan.plan(model, "node-1", bench.host_ips)
            print(
                f"\n3b. pinned maps at {pods} pods x {policies} policies, every pod on this"
                f" node: {len(compiled.ipcache)} ipcache, {len(compiled.entries)} policy,"
                f" {len(compiled.endpoints)} endpoint entries"
            )
            memory_table(bench.node.pin_dir)
        _relabels(bench, store, f"{pods} pods ({local} on this node) x {policies} policies")


def _relabels(bench: Bench, store: MeshStore, what: str) -> None:
    """p0 (on this node) moves between two labels other pods have, so the
    identity set stays: from nothing (a fresh compile, the maps diffed
    against a read of the pins: the agent before the incremental compiler)
    and as the agent does it now, alternately."""
    rows: dict[str, list[tuple[float, float, float]]] = {"from nothing": [], "incremental": []}
    for i in range(10):
        t0 = time.perf_counter()
        store.apply("b", pod("p0", synthetic_ip(0), "a1" if i % 2 == 0 else "a0"))
        model = store.build()
        t1 = time.perf_counter()
        if i % 2 == 0:
            policy_apply._APPLIED.clear()  # the old path: read the pins
            c0 = time.perf_counter()
            compiled = policy_plan.plan(model, "node-1", bench.host_ips)
            c1 = time.perf_counter()
            policy_apply.apply(compiled, bench.new.maps_dir, bench.pods)
            c2 = time.perf_counter()
            bench.set_policy(model)  # the agent's own state, current again
            rows["from nothing"].append((t1 - t0, c1 - c0, c2 - c1))
        else:
            timing = bench.set_policy(model)
            rows["incremental"].append((t1 - t0, timing["compile_s"], timing["write_s"]))
    print(f"\n3c. one pod relabelled at {what}, ms (median of 5 each)")
    print(f"  {'':14s} {'build':>7} {'compile':>8} {'write':>7} {'total':>7}")
    for label, values in rows.items():
        med = [statistics.median(v[k] for v in values) * 1000 for k in range(3)]
        total = statistics.median(sum(v) for v in values) * 1000
        print(f"  {label:14s} {med[0]:7.1f} {med[1]:8.1f} {med[2]:7.1f} {total:7.1f}")


def memory_table(pin_dir: Path) -> None:
    """Each pinned map: type, max_entries, key/value bytes and memlock."""
    total = 0
    print(f"  {'map':24s} {'type':14s} {'max':>8} {'key':>4} {'value':>5} {'memlock KiB':>12}")
    for pin in sorted((pin_dir / "maps").iterdir()):
        info = bpftool_json("map", "show", "pinned", str(pin))
        if not isinstance(info, dict):
            continue
        memlock = int(info.get("bytes_memlock", 0))
        total += memlock
        print(
            f"  {pin.name:24s} {info.get('type', '?')!s:14s} {info.get('max_entries', 0):>8} "
            f"{info.get('bytes_key', 0):>4} {info.get('bytes_value', 0):>5} {memlock // 1024:>12}"
        )
    print(f"  {'total':24s} {'':14s} {'':>8} {'':>4} {'':>5} {total // 1024:>12}")
    print(
        "  (memlock is the kernel's own estimate of the map's memory (map_mem_usage):\n"
        "  preallocated maps (arrays, LRU hashes) are charged in full; BPF_F_NO_PREALLOC\n"
        "  hashes for their buckets plus the entries they hold; LPM tries per entry)"
    )


def kernel_path(bench: Bench, rounds: int, n: int, scale: MeshModel) -> None:
    """p50/p99 of a keep-alive-off request through the VIP, the client and
    server pods enforcing 1,000 policies over 10,000 identities, against no
    policy, with no policy measured again as the A/A control. bpf_stats off."""
    cells: dict[str, list[dict[str, float]]] = {"none": [], "policy": [], "none again": []}
    bench.run("new", REQUEST_LOOP, VIP_POLICED, 80, max(50, n // 10))  # warm-up
    for _ in range(rounds):
        bench.set_policy(None)
        cells["none"].append(bench.run("new", REQUEST_LOOP, VIP_POLICED, 80, n)[0])
        bench.set_policy(scale)
        cells["policy"].append(bench.run("new", REQUEST_LOOP, VIP_POLICED, 80, n)[0])
        bench.set_policy(None)
        cells["none again"].append(bench.run("new", REQUEST_LOOP, VIP_POLICED, 80, n)[0])
    print(
        f"\n4. kernel path (VIP, connect + reply + close), µs, {rounds} rounds of {n};"
        f" target p99 <= {TARGET}x without policy"
    )
    for label, rows in cells.items():
        p50 = [r["p50"] for r in rows]
        p99 = [r["p99"] for r in rows]
        print(
            f"  {label:12s} p50 {statistics.median(p50):6.0f}  p99 {statistics.median(p99):6.0f}"
            f"  [{min(p99):.0f}-{max(p99):.0f}]"
        )
    for label in ("policy", "none again"):
        ratios = [b["p99"] / a["p99"] for a, b in zip(cells["none"], cells[label], strict=True)]
        met = sum(r <= TARGET for r in ratios)
        shown = " ".join(f"{r:.2f}" for r in ratios)
        print(f"  p99 {label:10s} / none: {shown}  (<= {TARGET}x in {met} of {rounds})")
