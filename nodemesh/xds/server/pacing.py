"""When a stream's round caused by snapshot changes may start.

Leading edge: when the last such round started a whole window ago (or
never), the next starts now, so an isolated change pays no fixed delay.
Otherwise it waits for that window to end, and every change arriving
meanwhile rides along: a burst is one round at once plus at most one
trailing round per window, and churn one round per window.

Either way a round first lets the client answer the responses it has not
answered yet, for at most one window: an ACK still on the wire would
otherwise cross the new response, and the server would not know the client
holds what it just ACKed (SotW ignores a superseded nonce). A removal that
make-before-break must hold back would then go out at once, and a NACK
would be blamed on names the client had accepted. A fixed delay before
every push used to hide that race, most of the time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Pacer:
    """One stream's pacing state; used from its event loop only."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.pending = False  # a snapshot change not yet pushed
        self._round_at: float | None = None  # loop time the last paced round began
        self._answered = asyncio.Event()

    def changed(self) -> None:
        self.pending = True

    def answered(self) -> None:
        """The client ACKed or NACKed a response."""
        self._answered.set()

    async def wait(self, unanswered: Callable[[], bool]) -> None:
        """Return when the pending change's round may begin, and mark it
        begun: a change from now on owes a round of its own."""
        loop = asyncio.get_running_loop()
        limit = loop.time() + self.window
        if self._round_at is not None:
            remaining = self._round_at + self.window - loop.time()
            if remaining > 0:
                await asyncio.sleep(remaining)
        while unanswered() and loop.time() < limit:
            self._answered.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(limit):
                    await self._answered.wait()
        # Cleared before the round reads the snapshot: changes made while
        # waiting ride along; one made later is newer than what it sends.
        self.pending = False
        self._round_at = loop.time()
