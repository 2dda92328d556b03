"""The one polling helper of the tests, the integration tests and the benches.

Real parts (Envoy, the kernel, the API server double, child processes) change
state on their own schedule, so a test waits for a condition instead of
sleeping a fixed time. `wait_until` (blocking) and `wait_until_async` poll a
check until it returns a truthy value and return that value. On timeout they
raise AssertionError naming what was awaited, the timeout and the check's last
result (or the last exception it raised), so a failure says what was seen.
Timeouts are generous on purpose: the machine is a loaded 2-core one, and a
timeout is a failure bound, never a measured timing.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

# Exceptions a check may raise while the state it reads is not there yet
# (a map key, a list index, a partial assertion). Retried only if asked.
NOT_YET: tuple[type[BaseException], ...] = (AssertionError, LookupError)


class _Last:
    """What the check returned or raised last, for the failure message."""

    def __init__(self) -> None:
        self.value: object = None
        self.error: BaseException | None = None

    def describe(self) -> str:
        if self.error is not None:
            return f"last raised {type(self.error).__name__}: {self.error}"
        return f"last value: {self.value!r}"


def _timed_out(what: str, timeout: float, last: _Last) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g}s waiting for {what}; {last.describe()}")


def wait_until(
    check: Callable[[], T],
    *,
    what: str = "the condition",
    timeout: float = 30.0,
    interval: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `check()` every `interval` s until it returns a truthy value (returned).
    Exceptions in `retry_on` count as "not yet"; any other propagates at once."""
    deadline = time.monotonic() + timeout
    last = _Last()
    while True:
        try:
            last.value, last.error = check(), None
            if last.value:
                return last.value
        except retry_on as exc:
            last.error = exc
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, last) from last.error
        time.sleep(interval)


@overload
async def wait_until_async(
    check: Callable[[], Awaitable[T]],
    *,
    what: str = ...,
    timeout: float = ...,
    interval: float = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def wait_until_async(
    check: Callable[[], T],
    *,
    what: str = ...,
    timeout: float = ...,
    interval: float = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def wait_until_async(
    check: Callable[[], object],
    *,
    what: str = "the condition",
    timeout: float = 30.0,
    interval: float = 0.02,
    retry_on: tuple[type[BaseException], ...] = (),
) -> object:
    """The asyncio form of `wait_until`: `check` may be a plain function or a
    coroutine function; the loop keeps running between the polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = _Last()
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            last.value, last.error = value, None
            if value:
                return value
        except retry_on as exc:
            last.error = exc
        if loop.time() > deadline:
            raise _timed_out(what, timeout, last) from last.error
        await asyncio.sleep(interval)
