"""Measurement hygiene for bench/datapath.py: machine load, foreign CPU,
per-round statistics and per-hook BPF cost.

Kept apart from the topology so the rules are in one place: every path gets
the same CPU placement and the same cells, rounds are interleaved, and the
report says how noisy the machine was while it ran.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


def loadavg() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def wait_for_quiet(threshold: float, patience_s: float) -> float:
    """Waits (polling) until the 1-minute load is at most `threshold`, up to
    `patience_s`; returns the last reading, which the caller judges."""
    deadline = time.monotonic() + patience_s
    load = loadavg()
    while load > threshold and time.monotonic() < deadline:
        time.sleep(10)
        load = loadavg()
    return load


def _usage_usec(cgroup: Path) -> int:
    for line in (cgroup / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value)
    raise RuntimeError(f"{cgroup}/cpu.stat has no usage_usec")


class ForeignCpu:
    """CPU used by everything outside the benchmark's own cgroups, in cores.

    The load average counts the benchmark itself (hey and the Envoys keep a
    core busy), so it cannot say whether others were working. The cgroup2
    root's usage minus ours can: it is what other engineers' work took from
    the two cores while a cell ran."""

    def __init__(self, root: Path, ours: Path) -> None:
        self.root, self.ours = root, ours
        self.samples: list[float] = []

    @contextmanager
    def window(self) -> Iterator[None]:
        t0, r0, o0 = time.monotonic(), _usage_usec(self.root), _usage_usec(self.ours)
        yield
        t1, r1, o1 = time.monotonic(), _usage_usec(self.root), _usage_usec(self.ours)
        self.samples.append(max(0.0, ((r1 - r0) - (o1 - o0)) / 1e6 / (t1 - t0)))

    def summary(self) -> str:
        if not self.samples:
            return "foreign CPU: not sampled"
        med, top = statistics.median(self.samples), max(self.samples)
        return f"foreign CPU (cores busy with other work) per cell: median {med:.2f}, max {top:.2f}"


@dataclass
class Cells:
    """Per-round values of one metric, per path (rounds in order)."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, path: str, value: float) -> None:
        self.values.setdefault(path, []).append(value)

    def spread(self, path: str) -> str:
        v = self.values[path]
        return f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"

    def paired(self, path: str, ref: str, target: float) -> str:
        """The per-round ratio path/ref (both measured in the same round, so
        they share its background), its median and spread, and in how many
        rounds it met `target`."""
        ratios = [a / b for a, b in zip(self.values[path], self.values[ref], strict=True) if b]
        met = sum(1 for r in ratios if r <= target)
        return (
            f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}], "
            f"<= {target:g}x in {met}/{len(ratios)} rounds"
        )

    def overhead(self, path: str, ref: str, base: str) -> str:
        """Per round, (path - base) / (ref - base): the latency each path adds
        over `base`, as the article's "overhead vs. no mesh" column counts it."""
        rows = zip(self.values[path], self.values[ref], self.values[base], strict=True)
        ratios = [(p - b) / (r - b) for p, r, b in rows if r > b]
        if not ratios:
            return "n/a (reference not above base)"
        return (
            f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] "
            f"over {len(ratios)} rounds"
        )


@contextmanager
def bpf_stats() -> Iterator[None]:
    """kernel.bpf_stats_enabled on for the block: per-program run_time_ns.
    It costs two clock reads per program run, so it stays off while
    latency is measured."""
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = knob.read_text().strip()
    knob.write_text("1")
    try:
        yield
    finally:
        knob.write_text(before)


def bpftool_json(*args: str) -> object:
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, check=True, text=True)
    return json.loads(out.stdout.strip() or "null")  # an empty cgroup prints nothing


def hook_counters(cgroups: list[Path]) -> dict[str, tuple[int, int]]:
    """(run_cnt, run_time_ns) of each program attached to these cgroups, by
    program name (each of ours is attached once)."""
    out: dict[str, tuple[int, int]] = {}
    for cg in cgroups:
        attached = bpftool_json("cgroup", "show", str(cg))
        for entry in attached if isinstance(attached, list) else []:
            info = bpftool_json("prog", "show", "id", str(entry["id"]))
            if isinstance(info, dict):
                name = str(info.get("name", entry["id"]))
                out[name] = (int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0)))
    return out


def hook_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, float]]:
    """Runs and mean ns per run of each program between two readings."""
    delta: dict[str, tuple[int, float]] = {}
    for name, (cnt, ns) in after.items():
        cnt0, ns0 = before.get(name, (0, 0))
        runs = cnt - cnt0
        delta[name] = (runs, (ns - ns0) / runs if runs else 0.0)
    return delta


def parse_hey(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m[1])
    for pct in ("50", "99"):
        m = re.search(rf"{pct}% in ([\d.]+) secs", text)
        if m:
            out[f"p{pct}"] = float(m[1]) * 1000
    m = re.search(r"\[200\]\s+(\d+) responses", text)
    out["ok"] = float(m[1]) if m else 0.0
    errors = re.search(r"Error distribution:\n((?:\s+\[\d+\].*\n?)+)", text)
    out["errors"] = (
        float(sum(int(x) for x in re.findall(r"\[(\d+)\]", errors[1]))) if errors else 0.0
    )
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def map_memlock(pin_dir: Path) -> int:
    total = 0
    for pin in (pin_dir / "maps").iterdir():
        info = json.loads(
            subprocess.run(
                ["bpftool", "-j", "map", "show", "pinned", str(pin)],
                capture_output=True,
                check=True,
            ).stdout
        )
        total += int(info.get("bytes_memlock", 0))
    return total


LATENCY_CELLS = ("off", "on")
TARGETS = (
    # (metric, path, reference, target ratio): the latency targets.
    ("p99 ka-off", "nodemesh kernel", "direct pod IP", 1.05),
    ("p99 ka-off", "nodemesh kernel", "iptables DNAT", 1.0),
    ("p99 ka-on", "nodemesh kernel", "direct pod IP", 1.05),
    ("p99 ka-on", "nodemesh kernel", "iptables DNAT", 1.0),
    ("p99 ka-off", "node Envoy", "sidecars", 0.5),
    ("p99 ka-on", "node Envoy", "sidecars", 0.5),
)
# The A/A control: two identical direct paths, measured like the others.
CONTROLS = (
    ("p99 ka-off", "direct again", "direct pod IP", 1.05),
    ("p99 ka-on", "direct again", "direct pod IP", 1.05),
)


# Kernel counters that say why new connections stall: listen queue overflow,
# SYN retransmits, TIME_WAIT handling, resets. Read per network namespace
# through /proc/<pid>/net of a process living in it.
NET_COUNTERS = (
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPBacklogDrop",
    "TCPSynRetrans",
    "TCPTimeWaitOverflow",
    "TWRecycled",
    "PAWSEstab",
    "TCPChallengeACK",
    "TCPAbortOnData",
    "AttemptFails",
    "EstabResets",
    "OutRsts",
    "RetransSegs",
)


def net_counters(pid: int) -> dict[str, int]:
    """The NET_COUNTERS of the netns `pid` lives in, plus `tw` (TIME_WAIT
    sockets now, from sockstat)."""
    out: dict[str, int] = {}
    for table in ("netstat", "snmp"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()
        for head, values in zip(lines[::2], lines[1::2], strict=True):
            for key, value in zip(head.split()[1:], values.split()[1:], strict=True):
                if key in NET_COUNTERS:
                    out[key] = int(value)
    sockstat = Path(f"/proc/{pid}/net/sockstat").read_text()
    m = re.search(r"TCP: .* tw (\d+)", sockstat)
    out["tw"] = int(m[1]) if m else 0
    return out


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counters that moved (TIME_WAIT as the count at the end)."""
    moved = {k: after[k] - before.get(k, 0) for k in after if k != "tw"}
    return {**{k: v for k, v in moved.items() if v}, "tw": after.get("tw", 0)}


def _with_children(pid: int) -> list[int]:
    """pid and its descendants (nginx's worker is a child of its master)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += _with_children(int(child))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes and their children, all threads
    (from /proc/<pid>/stat, which sums a process's threads)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in [p for top in pids for p in _with_children(top)]:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total / ticks
