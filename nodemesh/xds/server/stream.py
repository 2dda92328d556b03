"""What SotW and delta ADS streams share: the reader and sender tasks,
coalescing, bounded writes, ACK/NACK bookkeeping, make-before-break holds,
logging and metrics.

Each stream runs two named tasks in a TaskGroup:
- the reader applies client requests to per-type state and wakes the sender;
- the sender waits for a wake-up, then walks the types in make-before-break
  order and writes at most one response per type, built from the latest
  snapshot at that moment. Rounds caused by snapshot changes are paced
  (pacing.py): the first change after a quiet window is pushed at once,
  the rest of a burst in one trailing round. Nothing is queued: while a
  write is blocked on a slow client, newer snapshots only mark the stream
  dirty, and the next round sends the latest state. A write that does not complete
  within `send_timeout` closes the stream (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from envoy.config.core.v3 import base_pb2

from nodemesh.xds.cache import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    Snapshot,
    SnapshotSource,
    short_name,
)
from nodemesh.xds.cache.resources import push_rank
from nodemesh.xds.server.callbacks import (
    CallbackSet,
    RequestInfo,
    RequestKind,
    ResponseInfo,
    StreamInfo,
    truncate_detail,
)
from nodemesh.xds.server.errors import ClientTooSlow, XdsServerError
from nodemesh.xds.server.identity import NodeIdentityRule, check_node_identity
from nodemesh.xds.server.limits import check_name_bound, check_type_url, checked_node
from nodemesh.xds.server.pacing import Pacer
from nodemesh.xds.server.state import Inflight, TypeState
from nodemesh.xds.vocab import DEFAULT_PUSH_DELAY

log = structlog.get_logger("nodemesh.xds.server")

_stream_ids = itertools.count(1)

# What serves traffic: a removal of one of these waits for the ACK of what
# replaces it (see `AdsStream.held_removals`).
SERVING_TYPES = (CLUSTER, LISTENER, ROUTE)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Per-stream limits and timing.

    coalesce_delay: the pacing window for snapshot changes. The first
        change after a window without a snapshot round is pushed at once
        (leading edge); changes within the window that follows become one
        trailing push at its end. istiod waits 100 ms before every push;
        go-control-plane pushes at once, paced only by the client's ACKs.
    send_timeout: a client that has not taken a response off the wire
        within this time is disconnected rather than buffered for.
    max_names: bound on resource names one stream may subscribe to, across
        types; beyond it the stream fails with RESOURCE_EXHAUSTED.
    absent_listeners: a SotW LDS subscription to a name that does not exist
        also gets a stand-in Listener that fails gRPC calls at once (gRPC
        clients wait 15 s otherwise; see absent.py).
    node_identity: when set, a TLS client's node.id must be one its
        certificate names (identity.py); PERMISSION_DENIED otherwise.
    max_other_types: bound on type URLs this server does not know (not in
        `nodemesh.xds.vocab.SHORT_NAMES`) one stream may ask for; each costs
        per-stream state, so a client inventing them fails with
        RESOURCE_EXHAUSTED instead of growing the server without bound.
    max_type_url_length: longer type URLs are refused (INVALID_ARGUMENT);
        Envoy's longest is under 100 characters.
    max_node_id_length, max_node_bytes: bounds on the node a stream names
        (its id, and the whole Node message the server keeps for status and
        CSDS); beyond them INVALID_ARGUMENT.
    """

    coalesce_delay: float = DEFAULT_PUSH_DELAY
    send_timeout: float = 30.0
    max_names: int = 100_000
    absent_listeners: bool = True
    node_identity: NodeIdentityRule | None = None
    max_other_types: int = 16
    max_type_url_length: int = 512
    max_node_id_length: int = 1024
    max_node_bytes: int = 64 * 1024


class AdsStream(ABC):
    """One ADS stream; subclasses implement the SotW or delta variant."""

    api: str = ""

    def __init__(
        self,
        source: SnapshotSource,
        settings: StreamSettings,
        callbacks: CallbackSet,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        self.stream_id = next(_stream_ids)
        self.source = source
        self.settings = settings
        self.callbacks = callbacks
        self.info: StreamInfo | None = None  # set once the node is known
        self.peer = context.peer()
        self.connected_at = time.time()
        self.node: base_pb2.Node | None = None
        self.node_key = ""
        self.states: dict[str, TypeState] = {}
        self.held_names = 0  # names subscribed when the stream ended
        self._context = context
        self._wake = asyncio.Event()
        self._pacer = Pacer(settings.coalesce_delay)
        self._cancel_watch: Callable[[], None] | None = None
        self._nonces = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        # The last round held back a removal (see held_removals): an ACK of
        # a serving type may release it.
        self._holding = False
        self._sender: asyncio.Task[None] | None = None
        # A write in flight must not be cancelled: gRPC core then refuses
        # the call's final status (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS) and
        # the client never learns the stream ended (found by the ADS fuzz
        # harness: a client half-closing right after a request).
        self._writing = False
        self._ending = False
        self._refusal: XdsServerError | None = None
        # What the request being applied answered (set by on_ack/on_nack),
        # and the response being written: reported to the callbacks.
        self._answer: RequestInfo | None = None
        self._response: ResponseInfo | None = None
        # EDS names to send again although unchanged (see note_cluster_updates)
        self._eds_refresh: set[str] = set()
        self.log = log.bind(stream_id=self.stream_id, api=self.api, peer=self.peer)

    # -- lifecycle ---------------------------------------------------------------

    async def run(self, requests: AsyncIterator[Any]) -> None:
        """Serve the stream until the client closes it, `stop()` is called or
        an error ends it (raised as the first XdsServerError, or as is)."""
        try:
            async with asyncio.TaskGroup() as group:
                sender = group.create_task(self._send_loop(), name=f"ads-{self.stream_id}-send")
                reader = group.create_task(
                    self._read_loop(requests), name=f"ads-{self.stream_id}-read"
                )
                self._tasks, self._sender = [sender, reader], sender
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        else:
            if self._refusal is not None:
                raise self._refusal
        finally:
            self._tasks, self._sender = [], None
            if self._cancel_watch is not None:
                self._cancel_watch()
            self.log.info("xds_disconnect")
            if self.info is not None:
                self.callbacks.stream_closed(self.info)
            # Drop per-stream state now, by reference count: the stream
            # object itself may sit in a reference cycle (tasks, bound
            # methods) until the cyclic GC runs, and must not pin every
            # name it subscribed to until then.
            self.held_names = sum(len(s.names) for s in self.states.values())
            self.states = {}
            self._eds_refresh = set()

    def stop(self) -> None:
        """End the stream cleanly (status OK): used to drain on shutdown."""
        for task in self._tasks:
            if task is not self._sender:
                task.cancel()
        self._end_sending()

    def _end_sending(self) -> None:
        """Stop the sender now, or right after the write in flight."""
        self._ending = True
        if self._sender is None:
            return
        if self._writing:
            self._wake.set()  # the send loop returns after this write
        else:
            self._sender.cancel()

    async def _read_loop(self, requests: AsyncIterator[Any]) -> None:
        try:
            async for request in requests:
                self._apply(request)
                # Not kept while waiting for the next one: a request may
                # carry 100,000 names, and a cancelled stream's frame lives
                # on in a reference cycle until the cyclic GC runs.
                del request
        except XdsServerError as exc:
            # Refused: raised by run() once the sender has stopped. Raising
            # here would make the TaskGroup cancel a write in flight.
            self._refusal = exc
        self._end_sending()  # half-closed or refused: nothing more to answer

    def _apply(self, request: Any) -> None:
        check_type_url(request, self.states.keys(), self.settings)
        if self.node is None:
            self._bind_node(request)
        self._answer = None
        changed = self.handle_request(request)
        # Refuse before any response is built for the names: an abort
        # while a write is in flight fails in gRPC core.
        self._check_name_bound()
        self._announce_request(request)
        if changed:
            self._wake.set()

    def _announce_request(self, request: Any) -> None:
        if self.info is None:
            return
        answer = self._answer
        if answer is None:
            nonce = request.response_nonce
            answer = RequestInfo(
                type_url=request.type_url,
                kind=RequestKind.STALE if nonce else RequestKind.REQUEST,
                nonce=nonce,
                version_info=getattr(request, "version_info", ""),
            )
        self.callbacks.request(self.info, answer)

    def _bind_node(self, request: Any) -> None:
        node = checked_node(request, self.settings)
        check_node_identity(self.settings.node_identity, node.id, self._context, self.log)
        self.node = node
        self.node_key = self.source.node_key(node)
        self.log = self.log.bind(node_id=node.id, node_key=self.node_key)
        self._cancel_watch = self.source.watch(self.node_key, self._on_snapshot)
        self.log.info("xds_connect", cluster=node.cluster)
        self.info = StreamInfo(
            self.stream_id, self.api, self.peer, node.id, self.node_key, node.cluster
        )
        self.callbacks.stream_open(self.info)

    def _check_name_bound(self) -> None:
        check_name_bound((s.names for s in self.states.values()), self.settings)

    def _on_snapshot(self) -> None:
        self._pacer.changed()
        self._wake.set()

    def wake(self) -> None:
        """Re-evaluate every type on the next round without coalescing delay."""
        self._wake.set()

    # -- sending -----------------------------------------------------------------

    async def _send_loop(self) -> None:
        while not self._ending:
            await self._wake.wait()
            if self._ending:
                return
            if self._pacer.pending:
                await self._pacer.wait(self._unanswered)
            self._wake.clear()
            snapshot = self.source.snapshot(self.node_key)
            if snapshot is None:
                continue
            # Make-before-break: CDS, EDS, LDS, RDS, then anything else; all
            # from one snapshot, so one model version per round.
            self._holding = False
            for type_url in sorted(self.states, key=push_rank):
                if self._ending:
                    return
                await self._push(self.states[type_url], snapshot)

    def _unanswered(self) -> bool:
        """The latest response of some type awaits its ACK or NACK."""
        return any(state.nonce in state.inflight for state in self.states.values())

    async def _push(self, state: TypeState, snapshot: Snapshot) -> None:
        # A helper of its own so the response bytes die with its frame: a
        # local in the long-lived send loop would pin the last response of
        # every idle stream in memory.
        payload = self.build_response(state, snapshot)
        if payload is not None:
            response, self._response = self._response, None
            await self._write(state, payload)
            if response is not None and self.info is not None:
                self.callbacks.response(self.info, response)

    async def _write(self, state: TypeState, payload: bytes) -> None:
        self._writing = True
        try:
            async with asyncio.timeout(self.settings.send_timeout):
                await self._context.write(payload)
        except TimeoutError:
            raise ClientTooSlow(
                f"client did not read a {short_name(state.type_url)} response within "
                f"{self.settings.send_timeout:g}s"
            ) from None
        finally:
            self._writing = False

    def next_nonce(self) -> str:
        return format(next(self._nonces), "x")

    def sent_response(
        self, state: TypeState, inflight: Inflight, count: int, size: int, removed: int = 0
    ) -> None:
        """Bookkeeping after a response was built (before it is written)."""
        state.nonce = inflight.nonce
        state.sent_version = inflight.version_info
        state.responded = True
        state.remember(inflight)
        self._response = ResponseInfo(
            state.type_url, inflight.version_info, inflight.nonce, count, removed, size
        )
        self.log.info(
            "xds_push",
            type_url=state.type_url,
            version=inflight.version_info,
            nonce=inflight.nonce,
            resources=count,
            bytes=size,
        )

    # -- ACK / NACK ----------------------------------------------------------------

    def on_ack(self, state: TypeState, nonce: str, full_state: bool) -> None:
        done = state.record_ack(nonce, full_state)
        self._answer = RequestInfo(
            state.type_url,
            RequestKind.ACK,
            nonce,
            state.acked_version,
            latency=time.monotonic() - done.sent_at if done is not None else None,
        )
        self.log.info("xds_ack", type_url=state.type_url, version=state.acked_version, nonce=nonce)
        self._pacer.answered()
        if state.type_url in SERVING_TYPES and self._holding:
            # Held removals may now be safe (make-before-break).
            self.wake()

    def on_nack(self, state: TypeState, nonce: str, message: str, code: int) -> None:
        # The client's words, of any size: truncated once, here, for the
        # record, the log, status, CSDS and the callbacks alike.
        message = truncate_detail(message)
        done = state.record_nack(nonce, message, code)
        version = state.nack.version_info if state.nack else ""
        self._answer = RequestInfo(
            state.type_url,
            RequestKind.NACK,
            nonce,
            version,
            error_detail=message,
            error_code=code,
            latency=time.monotonic() - done.sent_at if done is not None else None,
        )
        self.log.warning(
            "xds_nack", type_url=state.type_url, version=version, nonce=nonce, error=message
        )
        self._pacer.answered()

    def routes_converged(self, snapshot: Snapshot) -> bool:
        """True when the client has ACKed the current listeners and routes it
        subscribes to. Until then, clusters the old routes may still use are
        not removed (make-before-break)."""
        for type_url in (LISTENER, ROUTE):
            state = self.states.get(type_url)
            if state is None:
                continue
            if state.inflight or state.acked != self.desired_versions(state, snapshot):
                return False
        return True

    def serving_converged(self, snapshot: Snapshot) -> bool:
        """True when the client has ACKed, at the version `snapshot` has, every
        listener, route and cluster it subscribes to and has sent no response
        of those types it has not answered. Names it still holds beyond those
        (held removals) do not count against it."""
        for type_url in SERVING_TYPES:
            state = self.states.get(type_url)
            if state is None:
                continue
            if state.inflight:
                return False
            acked = state.acked
            for name, version in self.desired_versions(state, snapshot).items():
                if acked.get(name) != version:
                    return False
        return True

    def held_removals(self, state: TypeState, snapshot: Snapshot, removed: set[str]) -> set[str]:
        """Of the names `snapshot` no longer has, those the client must keep
        for now: nothing that serves traffic is withdrawn before its
        replacement is ACKed (docs/xds-server.md, "Held removals").

        - A listener, route or cluster the client has ACKed stays until the
          client has ACKed everything of those types that `snapshot` has. A
          NACK (even for a config admission did not predict) keeps it, so
          Envoy keeps serving on it until a later version is ACKed.
        - A cluster also stays while the client has not ACKed the listeners
          and routes that stop using it (they may still route to it).
        - Everything the client ACKed stays while the source holds removals
          (the node agent: until the kernel no longer steers to it)."""
        if not removed or state.type_url not in SERVING_TYPES:
            return set()
        if self.source.removals_held(self.node_key):
            held = removed & state.acked.keys()
        elif state.type_url == CLUSTER and not self.routes_converged(snapshot):
            held = set(removed)
        elif self.serving_converged(snapshot):
            return set()
        else:
            held = removed & state.acked.keys()
        if held:
            self._holding = True
            self.log.info(
                "xds_hold_removal", type_url=state.type_url, names=sorted(held)[:20], held=len(held)
            )
        return held

    @staticmethod
    def desired_versions(state: TypeState, snapshot: Snapshot) -> dict[str, str]:
        """name -> version the client should hold for `state`'s subscription."""
        if state.wildcard:
            held = snapshot.wildcard_and(state.type_url, state.names)
            return {n: r.version for n, r in held.items()}
        resources = snapshot.get(state.type_url)
        return {n: resources[n].version for n in state.names if n in resources}

    # -- cluster warming ------------------------------------------------------------

    def note_cluster_updates(self, clusters: Iterable[str], snapshot: Snapshot) -> None:
        """Envoy re-creates an updated cluster and keeps it warming until it
        receives that cluster's endpoints again, even if they did not change
        (xDS protocol, "Resource warming"); without a response it waits for
        initial_fetch_timeout (15 s by default). Remember the EDS names of
        updated clusters so the EDS step of this round sends them again."""
        if ENDPOINT in self.states:
            self._eds_refresh.update(snapshot.endpoint_names(clusters))

    def take_eds_refresh(self, state: TypeState) -> set[str]:
        """EDS names of updated clusters this subscription must resend."""
        if state.type_url != ENDPOINT or not self._eds_refresh:
            return set()
        wanted = {n for n in self._eds_refresh if state.subscribed(n)}
        self._eds_refresh.clear()
        return wanted

    # -- the variant's part ----------------------------------------------------------

    def type_state(self, type_url: str) -> TypeState:
        state = self.states.get(type_url)
        if state is None:
            state = self.states[type_url] = TypeState(type_url)
        return state

    @abstractmethod
    def handle_request(self, request: Any) -> bool:
        """Apply one request; True if the sender should re-evaluate."""

    @abstractmethod
    def build_response(self, state: TypeState, snapshot: Snapshot) -> bytes | None:
        """The serialized response for `state` against `snapshot`, or None."""


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        return exc
    return group
