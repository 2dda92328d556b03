"""The file source hears a change through inotify instead of waiting for its
next poll, and a write its writer closed needs no settle window (issue 10,
settle latency). Real files in a real directory, and the source's real
`run()` loop; polling is pushed out to an hour, and the settle window's
clock never moves, so only inotify can make a change visible here."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource
from tests.sources.test_file_source_robustness import FakeClock, canary
from tests.support.polling import wait_until_async

EXTRA = "apiVersion: v1\nkind: Service\nmetadata: {name: NAME}\nspec: {ports: [{port: 81}]}\n"


def services(store: MeshStore) -> set[str]:
    return {s.name for s in store.build().services}


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[MeshStore, FileSource, FakeClock]]:
    store, _, clock = canary(tmp_path)
    # No poll after the first, and no write settles by its age: only inotify
    # wakes the source, and only a writer's close makes a write complete.
    source = FileSource(tmp_path, store, poll_interval=3600.0, settle_seconds=3600.0, clock=clock)
    source.load()
    task = asyncio.create_task(source.run(), name="file-source")
    await asyncio.sleep(0)
    try:
        yield store, source, clock
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_new_file_reaches_the_store_without_a_poll(
    running: tuple[MeshStore, FileSource, FakeClock], tmp_path: Path
) -> None:
    store, _, _ = running
    (tmp_path / "extra.yaml").write_text(EXTRA.replace("NAME", "extra"))  # closed on return
    await wait_until_async(lambda: "extra" in services(store), what="extra in the store")


async def test_a_file_renamed_into_place_is_read_at_once(
    running: tuple[MeshStore, FileSource, FakeClock], tmp_path: Path
) -> None:
    store, _, _ = running
    staging = tmp_path / ".extra.yaml.tmp"  # dot files are not manifests
    staging.write_text(EXTRA.replace("NAME", "renamed"))
    os.replace(staging, tmp_path / "renamed.yaml")
    await wait_until_async(lambda: "renamed" in services(store), what="renamed in the store")


async def test_a_file_still_open_for_writing_is_not_read(
    running: tuple[MeshStore, FileSource, FakeClock], tmp_path: Path
) -> None:
    store, _, _ = running
    path = tmp_path / "local-backends.yaml"
    content = path.read_bytes()
    before = store.build().version
    with path.open("wb") as handle:  # truncated: an editor's in-place save
        handle.write(content[: len(content) // 3])
        handle.flush()
        # A closed file written after it: once that one is in the store, the
        # source has scanned the open one too, and must have kept it.
        (tmp_path / "sentinel.yaml").write_text(EXTRA.replace("NAME", "sentinel"))
        await wait_until_async(lambda: "sentinel" in services(store), what="the sentinel")
        assert {"httpbin-v1", "httpbin-v2"} <= services(store)
        handle.write(content[len(content) // 3 :])
    await wait_until_async(
        lambda: "sentinel" in services(store) and store.build().version != before,
        what="the sentinel's model",
    )
    assert {"httpbin-v1", "httpbin-v2"} <= services(store)


async def test_a_deleted_file_still_waits_out_the_settle_window(
    running: tuple[MeshStore, FileSource, FakeClock], tmp_path: Path
) -> None:
    store, _, _ = running
    (tmp_path / "local-backends.yaml").unlink()
    (tmp_path / "sentinel.yaml").write_text(EXTRA.replace("NAME", "sentinel"))
    await wait_until_async(lambda: "sentinel" in services(store), what="the sentinel")
    # The window's clock has not moved: a delete-and-recreate may follow.
    assert {"httpbin-v1", "httpbin-v2"} <= services(store)
