"""The bounded ring of a node's recent flows, and its live followers.

Memory is bounded twice: the ring holds at most `capacity` flows (the oldest
is overwritten, as Hubble's ring is), and each follower (`observe --follow`)
has a bounded queue. A follower that falls behind loses flows; the loss is
counted exactly and delivered to it in order, as a LostEvent, before the
next flow it does get. Nothing is ever dropped silently.

Single-threaded by design: every method runs on the agent's event loop (the
ALS server, the kernel reader and the Observer service all live there).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from nodemesh._gen.nodemesh.v1 import flow_pb2

DEFAULT_CAPACITY = 4096  # Hubble's default ring size
DEFAULT_FOLLOWER_QUEUE = 1024


@dataclass(frozen=True, slots=True)
class Lost:
    """`count` flows this follower did not get, at this point in its stream."""

    count: int


class Follower:
    """One live reader; `get` yields flows in order, or a Lost marking a gap.

    Its queue holds at most `size` flows; a Lost marker sits between the flows
    on either side of a gap, so markers never outnumber flows."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[flow_pb2.Flow | Lost] = deque()
        self._flows = 0  # flows (not markers) queued
        self._pending_lost = 0  # lost since the last flow queued
        self._ready = asyncio.Event()
        self.lost = 0  # ever

    def offer(self, flow: flow_pb2.Flow) -> None:
        if self._flows >= self.size:
            self._pending_lost += 1
            self.lost += 1
            return
        if self._pending_lost:
            self._items.append(Lost(self._pending_lost))
            self._pending_lost = 0
        self._items.append(flow)
        self._flows += 1
        self._ready.set()

    async def get(self) -> flow_pb2.Flow | Lost:
        while not self._items:
            if self._pending_lost:
                count, self._pending_lost = self._pending_lost, 0
                return Lost(count)
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if not isinstance(item, Lost):
            self._flows -= 1
        return item


class FlowRing:
    """Recent flows of one node (at most `capacity`) and their followers."""

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, follower_queue: int = DEFAULT_FOLLOWER_QUEUE
    ) -> None:
        if capacity < 1:
            raise ValueError(f"flow ring capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.follower_queue = follower_queue
        self._flows: deque[flow_pb2.Flow] = deque(maxlen=capacity)
        self._followers: set[Follower] = set()
        self.seen = 0
        self.started_ns = time.monotonic_ns()
        self.lost_followers_gone = 0  # loss of followers that have left, kept in the total

    def add(self, flow: flow_pb2.Flow) -> None:
        self.seen += 1
        self._flows.append(flow)
        for follower in self._followers:
            follower.offer(flow)

    def __len__(self) -> int:
        return len(self._flows)

    def recent(self) -> list[flow_pb2.Flow]:
        """The flows held now, oldest first (a copy: adding does not change it)."""
        return list(self._flows)

    @property
    def followers(self) -> int:
        return len(self._followers)

    @property
    def lost_by_followers(self) -> int:
        return self.lost_followers_gone + sum(f.lost for f in self._followers)

    @contextmanager
    def follow(self) -> Iterator[Follower]:
        """A follower for the `with` block; it is removed however the block ends
        (a client that disconnects mid-stream leaves nothing behind)."""
        follower = Follower(self.follower_queue)
        self._followers.add(follower)
        try:
            yield follower
        finally:
            self._followers.discard(follower)
            self.lost_followers_gone += follower.lost
