"""Incremental ADS (DeltaAggregatedResources), step by step against Envoy's
"xDS REST and gRPC protocol" document ("Incremental xDS").

The server tracks per type what the client holds (`sent`: name -> version,
seeded from `initial_resource_versions` on reconnect) and sends only the
difference: changed resources in `resources`, deleted ones in
`removed_resources`. When the stream was reconciled against a recent
ancestor of the current snapshot, only the names that changed since are
examined, so a one-endpoint change costs O(1) per stream, not O(resources).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping

from envoy.service.discovery.v3 import discovery_pb2

from nodemesh.xds.cache import CLUSTER, EncodedResource, Snapshot
from nodemesh.xds.cache.resources import WILDCARD_TYPES, length_delimited
from nodemesh.xds.server.state import WILDCARD, Inflight, TypeState
from nodemesh.xds.server.stream import AdsStream

# DeltaDiscoveryResponse field numbers (envoy/service/discovery/v3/discovery.proto)
_SYSTEM_VERSION, _TYPE_URL, _NONCE, _REMOVED = 1, 4, 5, 6


class DeltaStream(AdsStream):
    """One DeltaAggregatedResources stream."""

    api = "delta"

    def handle_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> bool:
        first = request.type_url not in self.states
        state = self.type_state(request.type_url)
        nonce = request.response_nonce
        # 1. ACK/NACK of a response (delta never ignores a request for its
        #    nonce: the request may also carry subscription changes).
        if nonce:
            if request.HasField("error_detail"):
                detail = request.error_detail
                self.on_nack(state, nonce, detail.message, detail.code)
                self._after_nack(state)
            else:
                self.on_ack(state, nonce, full_state=False)
        subscribing = request.resource_names_subscribe or request.resource_names_unsubscribe
        if not first and not subscribing:
            # A plain ACK or NACK, what every stream sends after every push:
            # no subscription to look at.
            return False
        # 2. Subscriptions. The legacy wildcard is an empty subscribe list on
        #    the first request of LDS/CDS; "*" subscribes to the wildcard
        #    explicitly and unsubscribing "*" ends it.
        # Interned: a thousand streams subscribing to the same names share
        # one copy of each name string.
        subscribe = set(map(sys.intern, request.resource_names_subscribe))
        unsubscribe = set(request.resource_names_unsubscribe)
        changed = self._subscribe(state, subscribe, unsubscribe, first)
        # 3. First request of the type: what the client already holds from a
        #    previous stream (for names it still subscribes to). Unchanged
        #    ones are not re-sent; ones that no longer exist are removed.
        if first:
            initial = request.initial_resource_versions
            state.sent = {n: v for n, v in initial.items() if state.subscribed(n)}
            # The client applied these on an earlier stream (to this server
            # or one before a restart): they count as ACKed, so status shows
            # SYNCED where they match, not STALE until the next push.
            state.acked = dict(state.sent)
            state.recheck.update(state.sent)
        return changed or first

    def _subscribe(
        self, state: TypeState, subscribe: set[str], unsubscribe: set[str], first: bool
    ) -> bool:
        changed = False
        if WILDCARD in subscribe or (first and not subscribe and state.type_url in WILDCARD_TYPES):
            changed |= not state.wildcard
            state.wildcard = True
            state.basis = 0  # a new wildcard needs a full look
        if WILDCARD in unsubscribe:
            state.wildcard = False
            changed = True
            state.basis = 0
        subscribe.discard(WILDCARD)
        unsubscribe.discard(WILDCARD)
        names = state.own_names()
        new = subscribe - names
        names |= subscribe
        # A newly subscribed name is (re)sent even if it was sent before:
        # the client dropped it when it unsubscribed.
        sent = state.own_sent()
        for name in new:
            if not state.wildcard:
                sent.pop(name, None)
            state.recheck.add(name)
        # Unsubscribing a name the client never had is fine: nothing to do.
        state.told_absent -= unsubscribe
        for name in unsubscribe & names:
            names.discard(name)
            if not state.wildcard:
                sent.pop(name, None)
        return changed or bool(new)

    def build_response(self, state: TypeState, snapshot: Snapshot) -> bytes | None:
        refresh = self.take_eds_refresh(state)
        if refresh:
            # resend endpoints of updated clusters even if unchanged
            sent = state.own_sent()
            for name in refresh:
                sent.pop(name, None)
            state.recheck |= refresh
        updated, removed = self._diff(state, snapshot, self._candidates(state, snapshot))
        state.basis = snapshot.serial
        if not updated and not removed:
            if state.responded:
                return None
            if not state.wildcard or not self._first_is_empty(state, snapshot):
                # First look at this type and the client already holds
                # exactly this snapshot's resources (a reconnect): in sync.
                state.responded = True
                state.sent_version = state.acked_version = snapshot.label
                self.log.info("xds_resume_in_sync", type_url=state.type_url, version=snapshot.label)
                return None
            # A wildcard subscription to a type this snapshot has none of (no
            # Clusters yet): answer at once, empty. Without an answer Envoy
            # waits out its initial_fetch_timeout (15 s) before it finishes
            # initializing, and serves nothing meanwhile.
        if state.type_url == CLUSTER:
            self.note_cluster_updates((r.name for r in updated), snapshot)
        nonce = self.next_nonce()
        payload = b"".join(
            (
                length_delimited(_SYSTEM_VERSION, snapshot.label.encode()),
                b"".join(r.delta_field for r in updated),
                length_delimited(_TYPE_URL, state.type_url.encode()),
                length_delimited(_NONCE, nonce.encode()),
                b"".join(length_delimited(_REMOVED, n.encode()) for n in removed),
            )
        )
        changes: dict[str, str | None] = {r.name: r.version for r in updated}
        changes.update(dict.fromkeys(removed))
        self.sent_response(
            state,
            Inflight(nonce, snapshot.label, time.monotonic(), changes),
            len(updated),
            len(payload),
            len(removed),
        )
        sent = state.own_sent()
        for r in updated:
            sent[r.name] = r.version
        for name in removed:
            sent.pop(name, None)
        return payload

    @staticmethod
    def _after_nack(state: TypeState) -> None:
        """A client rejects a delta response whole and keeps what it held
        before, so resources of the rejected response that never change
        would never reach it. Keep looking at them (see `_diff`)."""
        if state.nack is not None and state.nack.resources:
            state.recheck.update(state.nack.resources)

    @staticmethod
    def _first_is_empty(state: TypeState, snapshot: Snapshot) -> bool:
        """The client holds nothing of this type and the snapshot's wildcard
        view has none (resources served by name only do not count)."""
        return not state.sent and not snapshot.wildcard(state.type_url)

    @staticmethod
    def _candidates(state: TypeState, snapshot: Snapshot) -> Iterable[str]:
        """Names whose state may differ from what the client holds."""
        changes = snapshot.changes_since(state.basis) if state.basis else None
        recheck, state.recheck = state.recheck, set()
        if changes is not None:
            return changes.get(state.type_url, frozenset()) | recheck
        wanted = snapshot.wildcard(state.type_url).keys() if state.wildcard else frozenset()
        return set(wanted) | state.names | state.sent.keys() | recheck

    def _diff(
        self, state: TypeState, snapshot: Snapshot, candidates: Iterable[str]
    ) -> tuple[list[EncodedResource], list[str]]:
        resources = snapshot.get(state.type_url)
        hidden = snapshot.named_only.get(state.type_url, frozenset())
        retry = _rejected_response_changed(state, resources)
        updated: list[EncodedResource] = []
        removed: list[str] = []
        absent: list[str] = []
        for name in sorted(candidates):
            # A wildcard does not cover names served by name only.
            if name not in state.names and not (state.wildcard and name not in hidden):
                if name in state.sent:
                    removed.append(name)
                continue
            resource = resources.get(name)
            if resource is not None:
                state.told_absent.discard(name)
                # Only a new version is sent: a NACKed version is not resent
                # while the whole rejected response is unchanged (it would be
                # rejected again, taking other updates with it). Once any of
                # it changed or went away (the culprit, likely), the rest of
                # it is sent again: the client never took it.
                if state.sent.get(name) != resource.version:
                    updated.append(resource)
                elif state.rejected(name):
                    if retry:
                        updated.append(resource)
                    else:
                        state.recheck.add(name)  # look again next round
            elif name in state.sent:
                removed.append(name)
            elif name in state.names and name not in state.told_absent:
                # "Knowing when a requested resource does not exist": in
                # delta the server says so in removed_resources, so the
                # client need not wait out its initial_fetch_timeout.
                absent.append(name)
                state.told_absent.add(name)
        held = self.held_removals(state, snapshot, set(removed))
        if held:
            # Make-before-break: looked at again after the next ACK.
            state.recheck.update(held)
            removed = [name for name in removed if name not in held]
        state.told_absent.update(removed)
        return updated, removed + absent


def _rejected_response_changed(state: TypeState, resources: Mapping[str, EncodedResource]) -> bool:
    """Whether any resource of the last rejected response changed or is gone."""
    nack = state.nack
    if nack is None:
        return False
    for name, version in nack.resources.items():
        current = resources.get(name)
        if current is None or current.version != version:
            return True
    return False
