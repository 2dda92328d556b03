"""Tunables of the watcher. Each default says why it is what it is."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WatchSettings:
    backoff_initial: float = 0.5
    """First retry delay after a failed list or watch. Short, because the
    common failure (an API server restart, a dropped connection) heals fast."""

    backoff_max: float = 30.0
    """Retry delays double up to this cap. Thirty seconds bounds how stale we
    stay after a long outage ends, while a few hundred agents retrying at most
    twice a minute cannot hammer a recovering API server."""

    backoff_jitter: float = 0.5
    """Each delay is multiplied by a random factor in [1 - jitter, 1]. Agents
    that lost the API server together must not come back in lockstep."""

    watch_timeout_seconds: int = 300
    """Asked of the server as timeoutSeconds: it then ends each watch cleanly
    and we resume from the last resourceVersion. Five minutes keeps long-lived
    connections from pinning one API server replica forever (as client-go's
    reflector does, which picks 5-10 minutes)."""

    read_timeout_grace: float = 30.0
    """The client gives up on a silent watch after timeoutSeconds plus this.
    Bookmarks (sent at least every minute by kube-apiserver) keep a healthy
    watch talking, so a longer silence means a half-open connection."""

    connect_timeout: float = 10.0
    """TCP/TLS connect timeout. An API server that cannot accept a connection
    in ten seconds is treated as down and retried with backoff."""

    list_page_size: int = 500
    """`limit` for paginated lists, as client-go's default. Pages keep any
    single response (and the API server's memory per request) bounded on
    large clusters, while 500 items per round trip keeps the sync fast."""

    list_prefetch: bool = True
    """Request the next list page before preparing the current one, so the
    page's round trip and the API server's encoding overlap our parsing
    instead of taking turns. That pays with a remote API server; with the
    double on this 2-core machine the A/B in bench/k8s_sync.py is within
    noise. Costs one more page of memory during a list."""

    list_timeout: float = 60.0
    """Total time for one list page, generous for large pages on a busy server."""

    status_qps: float = 0.2
    """Status/event writes per object per second once the burst is spent: one
    every five seconds. Operators need the latest reason, not every flap."""

    status_burst: int = 3
    """Writes allowed back to back per object, so the first Accepted, then
    Programmed (or a NACK) appear at once."""

    field_manager: str = "nodemesh"
    """Names nodemesh as the writer of the status conditions it owns."""
