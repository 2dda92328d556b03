"""`python -m integration.apiserver_double --port 0 [--services N --endpoints M] [FILE.yaml ...]`.

Prints `listening on http://HOST:PORT` once ready, then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import yaml

from .server import ApiServerDouble
from .synthetic import synthetic_cluster


async def _main(args: argparse.Namespace) -> None:
    double = ApiServerDouble(args.host, args.port, bookmark_interval=args.bookmark_interval)
    double.store.load(synthetic_cluster(args.services, args.endpoints))
    for path in args.files:
        double.store.load(d for d in yaml.safe_load_all(Path(path).read_text()) if d)
    await double.start()
    print(f"listening on {double.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await double.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.apiserver_double")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--services", type=int, default=0)
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per Service")
    parser.add_argument("--bookmark-interval", type=float, default=5.0)
    parser.add_argument("files", nargs="*", help="YAML manifests to preload")
    asyncio.run(_main(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
