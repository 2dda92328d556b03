"""Per-stream, per-type subscription state (one object per type URL a stream
has asked for), in the spirit of go-control-plane's stream/v3 subscription.

Only the stream that owns a `TypeState` mutates it; status readers copy it
into frozen dataclasses (`nodemesh.xds.server.status`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from nodemesh.xds.cache import EncodedResource

# Bound on responses remembered while awaiting their ACK (delta may have
# several in flight; SotW only ever the latest one).
MAX_INFLIGHT = 16

WILDCARD = "*"


@dataclass(slots=True)
class Inflight:
    """One response sent and not yet ACKed or NACKed."""

    nonce: str
    version_info: str
    sent_at: float  # monotonic, for the convergence histogram
    # name -> version sent, or None for a name removed by this response
    resources: Mapping[str, str | None]


@dataclass(slots=True)
class NackRecord:
    """The last rejection of this type by the client."""

    message: str
    code: int
    version_info: str  # the rejected version
    nonce: str
    at: float  # wall clock
    # resources the rejected response introduced (name -> version): the
    # suspects, reported as ERROR while the client still holds them unACKed
    resources: dict[str, str]


@dataclass(slots=True)
class TypeState:
    """What one stream asked for and what it was given, for one type URL."""

    type_url: str
    wildcard: bool = False
    # Explicit subscriptions. SotW streams store a frozenset shared by every
    # stream asking for the same names (`names_key` is the same object);
    # delta streams own a set (see `own_names`).
    names: AbstractSet[str] = frozenset()
    names_key: frozenset[str] = frozenset()
    # What we believe the client holds: name -> version. SotW: the last
    # response's set. Delta: cumulative (updates minus removals).
    # Wildcard SotW streams share the snapshot's own mappings here (no
    # per-stream copy); delta streams own a dict (see `own_sent`).
    sent: Mapping[str, str] = field(default_factory=dict)
    # SotW only: the encoded resources of the last response, so a held
    # cluster removal can re-send the cluster it still needs.
    sent_resources: Mapping[str, EncodedResource] = field(default_factory=dict)
    sent_version: str = ""
    # SotW: the subscription changed since the last response; full-state
    # types answer it even when the content is the same.
    resubscribed: bool = False
    nonce: str = ""
    responded: bool = False
    inflight: OrderedDict[str, Inflight] = field(default_factory=OrderedDict)
    acked: Mapping[str, str] = field(default_factory=dict)
    acked_version: str = ""
    last_ack_at: float | None = None  # wall clock
    nack: NackRecord | None = None
    # Delta: serial of the snapshot `sent` was last reconciled against, and
    # names that must be looked at on the next push regardless of changes
    # (new subscriptions, held removals).
    basis: int = 0
    recheck: set[str] = field(default_factory=set)
    # Delta: explicitly subscribed names already answered with "does not
    # exist" (in removed_resources), so that answer is given once.
    told_absent: set[str] = field(default_factory=set)

    def own_names(self) -> set[str]:
        """`names` as a set this state may mutate (delta)."""
        if not isinstance(self.names, set):
            self.names = set(self.names)
        return self.names

    def own_sent(self) -> dict[str, str]:
        """`sent` as a dict this state may mutate (delta)."""
        if not isinstance(self.sent, dict):
            self.sent = dict(self.sent)
        return self.sent

    def forget_all(self) -> None:
        """The client unsubscribed from every name of a named type: it holds
        nothing of it and owes no answer to responses still in flight."""
        self.sent, self.acked = {}, {}
        self.sent_resources = {}
        self.sent_version = self.acked_version = ""
        self.inflight.clear()
        self.responded = False
        self.nack = None

    def subscribed(self, name: str) -> bool:
        """Whether `name` is asked for (a wildcard asks for every name; the
        server leaves out names it serves by name only)."""
        return self.wildcard or name in self.names

    def remember(self, inflight: Inflight) -> None:
        """Track a response awaiting ACK, forgetting the oldest beyond the bound."""
        self.inflight[inflight.nonce] = inflight
        while len(self.inflight) > MAX_INFLIGHT:
            self.inflight.popitem(last=False)

    def record_ack(self, nonce: str, full_state: bool) -> Inflight | None:
        """Apply the ACK of `nonce`; returns the acked response if known.
        `full_state`: the response carried everything the client now holds
        (SotW), so names absent from it are no longer held."""
        if nonce not in self.inflight:
            return None
        # Responses sent before the acked one are superseded (SotW) or were
        # already answered in order (delta): forget them.
        while self.inflight and next(iter(self.inflight)) != nonce:
            self.inflight.popitem(last=False)
        done = self.inflight.pop(nonce)
        if full_state:
            # SotW: the response is everything the client now holds; share
            # its mapping rather than copying it.
            self.acked = done.resources  # type: ignore[assignment]
        else:
            acked = self.acked if isinstance(self.acked, dict) else dict(self.acked)
            for name, version in done.resources.items():
                if version is None:
                    acked.pop(name, None)
                else:
                    acked[name] = version
            self.acked = acked
        self.acked_version = done.version_info
        self.last_ack_at = time.time()
        if self.nack is not None and not any(self.rejected(n) for n in self.nack.resources):
            # The client accepted a later response and holds no version it
            # rejected any more: the NACK is resolved, and no view (status,
            # CSDS, conditions) lists it after this.
            self.nack = None
        return done

    def rejected(self, name: str) -> bool:
        """True while the client holds a NACKed version of `name`: the last
        rejection named it and nothing newer has been sent for it."""
        nack = self.nack
        if nack is None or name not in nack.resources:
            return False
        bad = nack.resources[name]
        return self.sent.get(name) == bad and self.acked.get(name) != bad

    def record_nack(self, nonce: str, message: str, code: int) -> Inflight | None:
        """Record a rejection of `nonce`; nothing is resent because of it."""
        done = self.inflight.pop(nonce, None)
        suspects: dict[str, str] = {}
        version = ""
        if done is not None:
            version = done.version_info
            suspects = {
                n: v for n, v in done.resources.items() if v is not None and self.acked.get(n) != v
            }
        self.nack = NackRecord(
            message=message,
            code=code,
            version_info=version,
            nonce=nonce,
            at=time.time(),
            resources=suspects,
        )
        return done
