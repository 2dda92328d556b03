"""structlog set-up shared by every command: readable on a terminal, JSON
lines otherwise (what log collectors in a cluster expect)."""

from __future__ import annotations

import logging
import sys

import structlog

from nodemesh.cmd.terminal import safe_log_values


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of the write, so a
    logger cached while stderr was redirected never writes to a closed file."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """`json=None` picks by whether stderr is a terminal."""
    as_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    # JSON escapes control characters itself; the console renderer does not.
    safe: list[structlog.typing.Processor] = [] if as_json else [safe_log_values]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *safe,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
