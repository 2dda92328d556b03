"""What every command shares: flag names, exit codes, signals.

One convention for the whole `nodemesh` command line:

- the same flag for the same thing everywhere: `--node-name` is a Kubernetes
  node, `--node-id` an Envoy's xDS node id, `--admin-address` an admin HTTP
  port, `--k8s-server` an API server URL, `--report-status` /
  `--no-report-status` whether to write conditions and Events back;
- exit codes, decided in one place (`nodemesh.cmd.main.dispatch`): 0 for
  success and for a long-running command stopped by SIGTERM or SIGINT, 1 for
  a runtime failure, 2 for a usage or configuration error; each failure is
  one line on stderr, never a traceback;
- `--log-level` on every command (`nodemesh.cmd.logs`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DEFAULT_ADMIN_ADDRESS = "127.0.0.1:9876"


class UsageError(Exception):
    """A flag or configuration the command cannot run with: exit 2, one line."""


def common_flags() -> argparse.ArgumentParser:
    """The parent parser every subcommand gets (`parents=[...]`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log threshold; logs go to stderr, JSON lines unless it is a terminal",
    )
    return parent


def add_admin_address(parser: argparse.ArgumentParser, default: str, help: str) -> None:
    parser.add_argument("--admin-address", "--admin", dest="admin", default=default, help=help)


def add_kubernetes_flags(
    parser: argparse.ArgumentParser, *, report_status: bool, optional: bool = True
) -> None:
    """The flags that make a command follow the Kubernetes API; `optional`
    adds `--kubernetes` for commands that can run without it."""
    group = parser.add_argument_group("Kubernetes")
    if optional:
        group.add_argument(
            "--kubernetes",
            action="store_true",
            help="watch the API server (in-cluster account, else kubeconfig)",
        )
    group.add_argument("--kubeconfig", help="kubeconfig file")
    group.add_argument("--context", help="kubeconfig context")
    group.add_argument("--k8s-server", help="API server URL without credentials (tests, proxies)")
    group.add_argument(
        "--report-status",
        action=argparse.BooleanOptionalAction,
        default=report_status,
        help="write conditions and Events back to the objects",
    )


def split_host_port(text: str, flag: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{flag}: expected host:port, got {text!r}")
    return host, int(port)


async def until_signalled(main: Coroutine[Any, Any, None], name: str) -> None:
    """Run `main` until it ends or SIGTERM/SIGINT arrives; on a signal it is
    cancelled, and its own teardown (AsyncExitStack callbacks, `finally`)
    drains its streams before this returns. SIGTERM is how Kubernetes stops
    every pod, so a stop by signal is a clean exit, not an error."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(main, name=name)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        # Ours (a signal) ends the command cleanly; anyone else's propagates.
        if not task.cancelled():
            raise
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
