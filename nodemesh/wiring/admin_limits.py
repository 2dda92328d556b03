"""Bounds for the admin port, so that idle or hostile clients cannot starve
the process of file descriptors or flood its log.

- `BoundedFactory`: at most `limit` admin connections are open. A new one
  beyond it closes the oldest (a kubelet probe connects and asks at once;
  a connection someone holds open without asking is the one that goes).
- `AcceptErrorsOnce`: asyncio reports every failed accept() (EMFILE when the
  process is out of descriptors) with a traceback, once per pending
  connection, so one burst printed tens of thousands of them. The
  condition is logged once per interval with how often it happened.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger("nodemesh.wiring.admin")

DEFAULT_MAX_CONNECTIONS = 256
# Leave most descriptors to xDS streams, sources and the datapath.
_SHARE_OF_FD_LIMIT = 4
_MIN_CONNECTIONS = 8
_ACCEPT_ERROR = "socket.accept() out of system resource"


def connection_limit(configured: int = DEFAULT_MAX_CONNECTIONS) -> int:
    """`configured`, but at most a quarter of the open-files soft limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(_MIN_CONNECTIONS, min(configured, soft // _SHARE_OF_FD_LIMIT))


class BoundedFactory:
    """Protocol factory for `loop.create_server` over an aiohttp server."""

    def __init__(self, server: web.Server, limit: int, interval: float = 10.0) -> None:
        self._server = server
        self.limit = limit
        self.evicted = 0
        self._report = _Once(interval)

    def __call__(self) -> asyncio.BaseProtocol:
        live = [c for c in self._server.connections if c.transport is not None]
        if len(live) >= self.limit:
            live[0].force_close()
            self.evicted += 1
            if self._report.due():
                log.warning(
                    "admin_connections_at_limit",
                    limit=self.limit,
                    closed_oldest=self._report.take(self.evicted),
                )
        return self._server()


class AcceptErrorsOnce:
    """Loop exception handler: accept() resource errors are logged once per
    `interval` (no traceback); everything else goes to `previous`."""

    def __init__(
        self,
        previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
        interval: float = 10.0,
    ) -> None:
        self._previous = previous
        self._once = _Once(interval)
        self.count = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_ERROR:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.count += 1
        if self._once.due():
            exc = context.get("exception")
            log.error(
                "accept_failed_out_of_resources",
                error=str(exc) if exc is not None else None,
                times=self._once.take(self.count),
                interval_seconds=self._once.interval,
            )


class _Once:
    """Rate limit: `due()` at most once per interval; `take(total)` gives how
    many happened since the last report."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None
        self._reported = 0

    def due(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True

    def take(self, total: int) -> int:
        since, self._reported = total - self._reported, total
        return since
