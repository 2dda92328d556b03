"""Client side of the demo: the article's curl loop, and judging the split.

Every request opens a new connection (as `curl` in a loop does), so each one
is a fresh routing decision by Envoy and, on a real node, a fresh connect()
that the kernel decides to steer or not.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from nodemesh.cmd.demo.backends import BACKEND_HEADER, VERSION_HEADER


@dataclass
class LoopResult:
    """What a request loop saw: answers per backend workload, and failures."""

    by_workload: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_workload.values()) + len(self.failures)

    @property
    def ok(self) -> int:
        return sum(self.by_workload.values())


async def request_loop(
    url: str,
    host: str,
    count: int | None,
    concurrency: int = 4,
    workload_of: Mapping[str, str] | None = None,
    expect_status: int = 200,
    stop: asyncio.Event | None = None,
) -> LoopResult:
    """Send `count` GETs to `url` with `Host: host`, `concurrency` at a time
    (`count` None: until `stop` is set).

    A response counts for the workload that answered (`workload_of` maps the
    backend's replica name to a workload; by default the version header is
    used). A connection error or an unexpected status counts as a failure.
    """
    result = LoopResult()
    started = 0

    def take() -> bool:
        nonlocal started
        if (stop is not None and stop.is_set()) or (count is not None and started >= count):
            return False
        started += 1
        return True

    connector = aiohttp.TCPConnector(force_close=True, limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while take():
                await _one_request(session, url, host, result, workload_of, expect_status)

        async with asyncio.TaskGroup() as group:
            for n in range(concurrency):
                group.create_task(worker(), name=f"demo-client-{n}")
    return result


async def _one_request(
    session: aiohttp.ClientSession,
    url: str,
    host: str,
    result: LoopResult,
    workload_of: Mapping[str, str] | None,
    expect_status: int,
) -> None:
    try:
        async with session.get(url, headers={"Host": host}) as resp:
            await resp.read()
            result.by_status[resp.status] += 1
            if resp.status != expect_status:
                result.failures.append(f"HTTP {resp.status}")
                return
            backend = resp.headers.get(BACKEND_HEADER, "")
            version = resp.headers.get(VERSION_HEADER, "?")
            workload = (workload_of or {}).get(backend, version)
            result.by_workload[workload] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.failures.append(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class SplitVerdict:
    """One cluster's observed share against its configured weight."""

    cluster: str
    configured: float  # fraction, 0..1
    observed: float
    count: int
    low: float  # the acceptance interval for `observed`
    high: float

    @property
    def within(self) -> bool:
        return self.low <= self.observed <= self.high


def judge_split(
    configured: Mapping[str, int], observed: Mapping[str, int], z: float = 4.0
) -> list[SplitVerdict]:
    """Compare observed counts with configured weights under a binomial model.

    Each cluster's count is Binomial(n, p). Accept when the observed share is
    within `z` standard deviations of p (z=4: a correct 90/10 split fails
    about once in 16,000 runs), widened by half a request for discreteness.
    """
    n = sum(observed.values())
    total_weight = sum(configured.values())
    verdicts = []
    for cluster in sorted(set(configured) | set(observed)):
        p = configured.get(cluster, 0) / total_weight if total_weight else 0.0
        count = observed.get(cluster, 0)
        share = count / n if n else 0.0
        margin = (z * math.sqrt(p * (1 - p) / n) + 0.5 / n) if n else 0.0
        verdicts.append(
            SplitVerdict(cluster, p, share, count, max(0.0, p - margin), min(1.0, p + margin))
        )
    return verdicts


def format_split(verdicts: list[SplitVerdict]) -> str:
    lines = [f"  {'cluster':<24} {'configured':>10} {'observed':>9} {'count':>6}   accepted range"]
    for v in verdicts:
        mark = "ok" if v.within else "OUT OF RANGE"
        lines.append(
            f"  {v.cluster:<24} {v.configured:>10.1%} {v.observed:>9.1%} {v.count:>6}"
            f"   {v.low:.1%} .. {v.high:.1%}  {mark}"
        )
    return "\n".join(lines)
