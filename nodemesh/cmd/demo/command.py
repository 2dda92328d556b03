"""`nodemesh demo`: the article's canary through a real Envoy, no Kubernetes."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from nodemesh.cmd.common import UsageError


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    demo = sub.add_parser(
        "demo", parents=[parent], help="the article's canary through a real Envoy"
    )
    demo.add_argument("--source-dir", type=Path, help="default: examples/canary")
    demo.add_argument("--example", help="a directory of examples/, e.g. canary-httproute")
    demo.add_argument("--requests", type=int, default=400, help="requests per round")
    demo.add_argument("--rounds", type=int, default=1, help="0: until Ctrl-C")
    demo.add_argument("--weights", help="e.g. 50,50: change the split live after round 1")
    demo.add_argument("--sotw", action="store_true", help="state-of-the-world ADS, not delta")
    # The demo's own output is the point; logs only when something is wrong.
    demo.set_defaults(func=run_demo, log_level="warning")


def run_demo(args: argparse.Namespace) -> int:
    from nodemesh.cmd.demo.run import DemoOptions, example_dir, parse_weights
    from nodemesh.cmd.demo.run import run_demo as demo_main

    try:
        weights = parse_weights(args.weights) if args.weights else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    options = DemoOptions(
        requests=args.requests,
        rounds=args.rounds,
        weights=weights,
        api_type="GRPC" if args.sotw else "DELTA_GRPC",
    )
    if args.source_dir is not None and args.example is not None:
        raise UsageError("give --source-dir or --example, not both")
    if args.source_dir is not None:
        options = dataclasses.replace(options, source_dir=args.source_dir)
    if args.example is not None:
        options = dataclasses.replace(options, source_dir=example_dir(args.example))
    return asyncio.run(demo_main(options))
