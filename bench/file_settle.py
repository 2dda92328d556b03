"""Settle latency of the file source: from a manifest written (and closed)
to the new object in the store, with the source's real `run()` loop, inotify
against polling only (the behaviour before inotify), side by side.

    .venv/bin/python -m bench.file_settle --runs 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import structlog

from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource

CANARY = Path(__file__).resolve().parents[1] / "examples" / "canary"
DOC = "apiVersion: v1\nkind: Service\nmetadata: {name: NAME}\nspec: {ports: [{port: 81}]}\n"


async def _latencies(inotify: bool, runs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for path in CANARY.glob("*.yaml"):
            shutil.copy(path, directory / path.name)
        store = MeshStore()
        source = FileSource(directory, store, inotify=inotify)
        source.load()
        task = asyncio.create_task(source.run(), name="file-source")
        out = []
        try:
            await asyncio.sleep(0.3)
            for i in range(runs):
                name = f"extra-{i}"
                started = time.perf_counter()
                (directory / f"{name}.yaml").write_text(DOC.replace("NAME", name))
                # The store has no change signal to wait on: sample it finely.
                while name not in {s.name for s in store.build().services}:  # noqa: ASYNC110
                    await asyncio.sleep(0.002)
                out.append(time.perf_counter() - started)
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"write -> object in the store ({args.runs} files each)")
    print(f"  {'variant':38} {'median':>9} {'max':>9}")
    for label, inotify in (("polling only (before)", False), ("inotify + close-write (now)", True)):
        values = await _latencies(inotify, args.runs)
        print(f"  {label:38} {statistics.median(values) * 1e3:7.1f}ms {max(values) * 1e3:7.1f}ms")


if __name__ == "__main__":
    asyncio.run(main())
