"""The `nodemesh` command line: the parser, and the one place where errors
become exit codes and one-line messages (see `nodemesh.cmd.common`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import structlog

from nodemesh.cmd.common import EXIT_FAILURE, EXIT_USAGE, UsageError, common_flags
from nodemesh.cmd.demo.canary import DemoError
from nodemesh.cmd.logs import configure_logging
from nodemesh.cmd.observe import ObserveError
from nodemesh.cmd.status_view import StatusError
from nodemesh.cmd.terminal import terminal_safe
from nodemesh.ebpf.errors import DatapathError, PlanError, PrerequisiteMissing
from nodemesh.k8s_watch.errors import ConfigError, K8sWatchError
from nodemesh.node.envoy_process import EnvoyError
from nodemesh.sources.errors import SourceDirectoryError, SourceError
from nodemesh.wiring.admin import AdminPortError
from nodemesh.xds.server.errors import ServerConfigError, XdsServerError

log = structlog.get_logger("nodemesh.cmd")

# Most specific first: the first class an error is an instance of decides.
# A configuration the command cannot run with is a usage error (2); anything
# the world said no to while running is a failure (1).
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UsageError, EXIT_USAGE),
    (PrerequisiteMissing, EXIT_USAGE),
    (PlanError, EXIT_USAGE),
    (ServerConfigError, EXIT_USAGE),
    (AdminPortError, EXIT_USAGE),
    (ConfigError, EXIT_USAGE),
    (SourceDirectoryError, EXIT_USAGE),
    (DatapathError, EXIT_FAILURE),
    (K8sWatchError, EXIT_FAILURE),
    (XdsServerError, EXIT_FAILURE),
    (SourceError, EXIT_FAILURE),
    (EnvoyError, EXIT_FAILURE),
    (DemoError, EXIT_FAILURE),
    (StatusError, EXIT_FAILURE),
    (ObserveError, EXIT_FAILURE),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodemesh",
        description="Sidecar-less service mesh: xDS control plane and eBPF node agent.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from nodemesh.cmd import agent, k8s_watch, observe, serve, status, translate
    from nodemesh.cmd.demo import command as demo

    for module in (serve, status, translate, demo, agent, k8s_watch, observe):
        # A fresh parent per module: argparse shares a parent's actions with
        # every parser built from it, so one module's set_defaults(log_level=)
        # would otherwise change every command's default.
        module.register(sub, common_flags())
    return parser


def exit_code(exc: BaseException) -> int | None:
    """The exit code for an expected error, None for a bug."""
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return None


def describe(exc: BaseException) -> str:
    if isinstance(exc, PrerequisiteMissing):
        return f"missing: {exc.missing} (fix: {exc.fix})"
    return str(exc) or type(exc).__name__


def dispatch(
    command: str, func: Callable[[argparse.Namespace], int], args: argparse.Namespace
) -> int:
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the one place errors become exit codes
        code = exit_code(exc)
        prefix = f"nodemesh {command}"
        if code is None:
            # A bug: still one line for the user; the traceback goes to the
            # log at debug level for whoever files the report.
            log.debug("command_crashed", command=command, exc_info=True)
            print(
                f"{prefix}: internal error: {type(exc).__name__}: {terminal_safe(exc)} "
                "(a bug; --log-level=debug logs the traceback)",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        message = terminal_safe(describe(exc).replace("\n", " "))
        print(f"{prefix}: {message}", file=sys.stderr)
        return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if args.command is None or func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_level)
    command = " ".join(part for part in (args.command, getattr(args, "action", None)) if part)
    return dispatch(command, func, args)


if __name__ == "__main__":
    sys.exit(main())
