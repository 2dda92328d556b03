"""Issue 10 item 7: the store builds models off the event loop, so a large
input never stalls what the loop serves (xDS streams, /healthz)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from nodemesh.model.objects import EnvoyConfig, ObjectError
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore
from tests.model.test_model_store import cec, service


async def test_the_loop_keeps_running_while_a_model_is_built() -> None:
    # The validator (a stand-in for a slow parse of a huge CEC) waits until the
    # event loop has run another task. Built on the loop, this would deadlock
    # (the test times out); built in a worker, the loop answers meanwhile.
    loop_ran = threading.Event()
    threads: list[bool] = []

    def slow_validator(config: EnvoyConfig) -> Sequence[ObjectError]:
        threads.append(threading.current_thread() is threading.main_thread())
        assert loop_ran.wait(timeout=10), "the event loop did not run during the build"
        return []

    store = MeshStore(validators=[slow_validator])
    store.apply("test", service())
    store.apply("test", cec("split"))

    async def health() -> None:
        loop_ran.set()

    async def first_model() -> MeshModel:
        async for model in store.updates():
            return model
        raise AssertionError("updates() ended")

    build = asyncio.ensure_future(first_model())
    await asyncio.sleep(0)
    await health()
    model = await asyncio.wait_for(build, timeout=60)
    assert [c.ref.name for c in model.envoy_configs] == ["split"]
    assert threads == [False]


async def test_changes_during_a_build_go_into_the_next_one() -> None:
    started = threading.Event()
    release = threading.Event()

    def gate(config: EnvoyConfig) -> Sequence[ObjectError]:
        started.set()
        release.wait(timeout=30)
        return []

    store = MeshStore(validators=[gate])
    store.apply("test", service())
    store.apply("test", cec("first"))
    build = asyncio.ensure_future(store.build_async())
    await asyncio.to_thread(started.wait, 30)
    store.apply("test", service("db"))  # while the worker builds
    release.set()
    first = await build
    assert {s.name for s in first.services} == {"web"}
    second = await store.build_async()
    assert {s.name for s in second.services} == {"web", "db"}
