"""nodemesh's ADS server side by side with go-control-plane v0.14's
SnapshotCache (bench/peers/gcp), in one run, driven by the same client
processes (bench.ads_fanout's workers: CDS wildcard + every EDS name, every
response ACKed) and serving the same snapshot (exported by nodemesh as JSON,
bench/peers/export.py).

For each server and stream count:
- initial sync: from starting the client processes until every stream has
  ACKed its endpoints (process start-up included, so mostly the clients');
- full config push: with every stream synced, every Cluster and every
  ClusterLoadAssignment changes; until every stream has ACKed both types;
- one-endpoint change: from publishing the change until every stream has
  ACKed it (median of --rounds);
- server CPU-seconds per client, for the full push and per change;
- server RSS with every stream idle.

Times run from publishing to the last ACK: each peer reports the wall and
CPU time it spent parsing the exported JSON, and that is taken out.

The Go peer is built from the Go module proxy (pinned go.mod/go.sum) into
~/.cache/nodemesh/go, never into the repository.

Usage: .venv/bin/python -m bench.peers.compare [--streams 1000 10000]
       [--workers 8] [--services 100] [--rounds 5] [--api delta]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.ads_fanout import mesh, worker
from bench.peers.export import export
from nodemesh.xds.cache import CLUSTER, ENDPOINT
from tests.support.gobuild import GoBuildError, go_program

HERE = Path(__file__).parent
GCP_SOURCE = HERE / "gcp"
TICKS = os.sysconf("SC_CLK_TCK")


def gcp_binary() -> Path:
    """go-control-plane's peer, built into a cache keyed by sources and Go."""
    return go_program(GCP_SOURCE, "gcp")


class Peer:
    """A server process speaking the peers' line protocol."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.port = int(self._reply().split()[1])

    def _reply(self) -> str:
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise SystemExit(f"peer {self.proc.args!r} exited")
        return line.strip()

    def ask(self, command: str) -> str:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()
        return self._reply()

    def load(self, path: Path) -> tuple[float, float]:
        """Publish an export; returns the wall and CPU seconds the peer spent
        parsing it (not part of a push: the harness takes them out)."""
        reply = self.ask(f"load {path}").split()
        if reply[0] != "ok":
            raise SystemExit(f"peer could not load {path}: {' '.join(reply)}")
        return float(reply[2]), float(reply[3])

    def acks(self, type_url: str) -> int:
        return int(self.ask(f"acks {type_url}"))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class Result:
    server: str
    streams: int
    initial_sync: float | None = None
    full_push: float | None = None
    full_cpu: float | None = None
    change_median: float | None = None
    change_max: float | None = None
    change_cpu: float | None = None
    rss_idle: float | None = None
    failure: str = ""


def _wait_acks(peer: Peer, target: int, timeout: float, type_url: str = ENDPOINT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if peer.acks(type_url) >= target:
            return True
        time.sleep(0.01)
    return False


def full_change(services: int) -> dict[str, dict[str, Any]]:
    """Every Cluster and every ClusterLoadAssignment differs from mesh()'s."""
    resources = mesh(services)
    for cluster in resources[CLUSTER].values():
        cluster.connect_timeout.seconds = 2
    for cla in resources[ENDPOINT].values():
        for endpoint in cla.endpoints[0].lb_endpoints:
            endpoint.endpoint.address.socket_address.port_value = 9090
    return resources


@contextmanager
def clients(port: int, api: str, streams: int, workers: int, services: int) -> Iterator[int]:
    ctx = multiprocessing.get_context("spawn")
    per = streams // workers
    procs = [
        ctx.Process(
            target=worker,
            args=(f"127.0.0.1:{port}", api, w * per, per, services),
            daemon=True,
        )
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        yield per * workers
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(10)


def measure(name: str, argv: list[str], files: list[Path], args: Any, streams: int) -> Result:
    result = Result(name, streams)
    # The client processes print each reconnect on this stderr: say whose.
    print(f"MEASURE {name}@{streams}", file=sys.stderr, flush=True)
    peer = Peer(argv)
    try:
        peer.load(files[0])
        t0 = time.perf_counter()
        with clients(peer.port, args.api, streams, args.workers, args.services) as n:
            result.streams = n
            if not _wait_acks(peer, n, args.timeout):
                result.failure = f"initial sync: {peer.acks(ENDPOINT)} of {n} streams ACKed"
                return result
            result.initial_sync = time.perf_counter() - t0
            time.sleep(2.0)  # idle
            result.rss_idle = peer.rss_mib()
            times, cpus = [], []
            for path in files[1:-1]:
                base = peer.acks(ENDPOINT)
                cpu0, t0 = peer.cpu_seconds(), time.perf_counter()
                parse, parse_cpu = peer.load(path)
                if not _wait_acks(peer, base + n, args.timeout):
                    result.failure = f"change {path.name} not ACKed by every stream"
                    return result
                times.append(time.perf_counter() - t0 - parse)
                cpus.append((peer.cpu_seconds() - cpu0 - parse_cpu) / n)
                time.sleep(0.3)
            result.change_median, result.change_max = statistics.median(times), max(times)
            result.change_cpu = statistics.median(cpus)
            # The full push last: it changes what the rounds above compare against.
            cds, eds = peer.acks(CLUSTER), peer.acks(ENDPOINT)
            cpu0, t0 = peer.cpu_seconds(), time.perf_counter()
            parse, parse_cpu = peer.load(files[-1])
            if not (
                _wait_acks(peer, cds + n, args.timeout, CLUSTER)
                and _wait_acks(peer, eds + n, args.timeout)
            ):
                result.failure = "full push not ACKed by every stream"
                return result
            result.full_push = time.perf_counter() - t0 - parse
            result.full_cpu = (peer.cpu_seconds() - cpu0 - parse_cpu) / n
    finally:
        peer.stop()
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(results: list[Result], args: Any) -> None:
    print(
        f"\nADS peers, {args.api}: {args.services} clusters + {args.services} endpoint sets "
        f"(10 endpoints each), {args.workers} client processes, {args.rounds} change rounds, "
        f"nodemesh coalesce {args.coalesce * 1000:.0f} ms, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    columns = [f"{r.server}@{r.streams}" for r in results]
    print(f"{'':46}" + "".join(f"{c:>24}" for c in columns))
    rows = [
        ("initial sync incl. client start-up (s)", "initial_sync", ".3f"),
        ("full config push, all ACKed (s)", "full_push", ".3f"),
        ("server CPU-s per client, full push (ms)", "full_cpu", ".3f"),
        ("one-endpoint change, all ACKed (median s)", "change_median", ".3f"),
        ("one-endpoint change, all ACKed (max s)", "change_max", ".3f"),
        ("server CPU-s per client per change (ms)", "change_cpu", ".4f"),
        ("server RSS, streams idle (MiB)", "rss_idle", ".1f"),
    ]
    for label, key, spec in rows:
        values = []
        for r in results:
            value = getattr(r, key)
            if value is not None and "(ms)" in label:
                value *= 1000
            values.append(_fmt(value, spec))
        print(f"{label:46}" + "".join(f"{v:>24}" for v in values))
    for r in results:
        if r.failure:
            print(f"{r.server}@{r.streams}: FAILED: {r.failure}")


def _built_or_exit() -> Path:
    try:
        return gcp_binary()
    except GoBuildError as error:
        raise SystemExit(str(error)) from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--api", choices=["delta", "sotw"], default="delta")
    parser.add_argument("--coalesce", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--only", choices=["nodemesh", "go-control-plane"])
    args = parser.parse_args()
    servers = {
        "nodemesh": [
            sys.executable,
            "-m",
            "bench.peers.nodemesh_peer",
            "--coalesce",
            str(args.coalesce),
        ],
        "go-control-plane": [str(_built_or_exit())],
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = [export(mesh(args.services), "v0", Path(tmp) / "v0.json")]
        for round_ in range(1, args.rounds + 1):
            resources = mesh(args.services, bump=round_)
            files.append(export(resources, f"v{round_}", Path(tmp) / f"v{round_}.json"))
        files.append(export(full_change(args.services), "full", Path(tmp) / "full.json"))
        results = [
            measure(name, argv, files, args, streams)
            for streams in args.streams
            for name, argv in servers.items()
            if args.only in (None, name)
        ]
    report(results, args)
    return 0 if not any(r.failure for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
