"""The `nodemesh` command line. Subcommands are wired in as they land."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodemesh",
        description="Sidecar-less service mesh: xDS control plane and eBPF node agent.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Each subcommand module registers itself and sets `func`.
    from nodemesh.cmd import agent, k8s_watch, serve, translate

    serve.register(sub)
    translate.register(sub)
    agent.register(sub)
    k8s_watch.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    func = getattr(args, "func", None)
    return int(func(args)) if func is not None else 0


if __name__ == "__main__":
    sys.exit(main())
