"""`nodemesh observe --status --envoy-admin ADDR`: the node Envoy's own count
of its access-log loss beside the agent's.

Envoy keeps serving when the agent is down, and what it could not deliver
shows only in its stats (docs/flows.md): Envoy 1.40 counts an entry flushed
into a stream that then failed as written, not dropped, so the ALS
cluster's failed connects and failed streams are what say "lost".
"""

from __future__ import annotations

import aiohttp

# Envoy stat -> how `observe --status` names it.
ALS_STATS = {
    "access_logs.grpc_access_log.logs_written": "entries written",
    "access_logs.grpc_access_log.logs_dropped": "entries dropped (logger buffer full)",
    "cluster.nodemesh_als.upstream_cx_connect_fail": "connects to the agent failed",
    "cluster.nodemesh_als.upstream_rq_5xx": "streams to the agent failed",
}
_FILTER = (
    r"^(access_logs\.grpc_access_log\.|cluster\.nodemesh_als\.upstream_(cx_connect_fail|rq_5xx)$)"
)


class EnvoyAdminError(Exception):
    """Envoy's admin port could not be read: one line for the CLI."""


async def als_stats(admin: str) -> dict[str, int]:
    """The ALS_STATS Envoy has (a stat it never touched is absent: 0)."""
    base = admin if admin.startswith("http") else f"http://{admin}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{base}/stats", params={"filter": _FILTER}) as reply,
        ):
            if reply.status != 200:
                raise EnvoyAdminError(f"--envoy-admin {admin}: /stats answered {reply.status}")
            body = await reply.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise EnvoyAdminError(f"--envoy-admin {admin}: {exc or type(exc).__name__}") from exc
    found = {name: 0 for name in ALS_STATS}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if name in found and value.strip().isdigit():
            found[name] += int(value)  # one line per logger: summed
    return found


def format_als(stats: dict[str, int]) -> str:
    lines = ["Envoy access log (ALS):"]
    lines += [f"  {label}: {stats.get(name, 0)}" for name, label in ALS_STATS.items()]
    return "\n".join(lines)
