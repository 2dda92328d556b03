"""State-of-the-world ADS (StreamAggregatedResources), step by step against
Envoy's "xDS REST and gRPC protocol" document.

Versions are content-derived: a response's version_info is the hash of the
sorted (name, version) pairs it carries, so a reconnecting client that
reports the current version gets no needless push, and every replica agrees.
Wildcard streams share the snapshot's encoded body and version maps; only
named subscriptions (EDS/RDS) build per-stream views, of the names asked.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from envoy.service.discovery.v3 import discovery_pb2

from nodemesh.xds.cache import CLUSTER, LISTENER, EncodedResource, Snapshot, view_version
from nodemesh.xds.cache.names import shared_names
from nodemesh.xds.cache.resources import WILDCARD_TYPES, length_delimited
from nodemesh.xds.server.absent import absent_listener
from nodemesh.xds.server.state import WILDCARD, Inflight, TypeState
from nodemesh.xds.server.stream import AdsStream

# DiscoveryResponse field numbers (envoy/service/discovery/v3/discovery.proto)
_VERSION_INFO, _TYPE_URL, _NONCE = 1, 4, 5


class _View:
    """What one subscription should hold against one snapshot."""

    __slots__ = ("body", "resources", "shared", "version", "versions")

    def __init__(
        self,
        resources: Mapping[str, EncodedResource],
        versions: Mapping[str, str],
        version: str,
        shared: bool,
        body: bytes | None = None,
    ) -> None:
        self.body = body  # pre-joined resources field, when shared per snapshot
        self.resources = resources
        self.versions = versions
        self.version = version
        self.shared = shared  # True: exactly the snapshot's full type


# Types whose SotW response is the client's whole state of that type, named
# or wildcard (xDS protocol: LDS and CDS).
_FULL_STATE = frozenset({CLUSTER, LISTENER})


class SotwStream(AdsStream):
    """One StreamAggregatedResources stream."""

    api = "sotw"

    def handle_request(self, request: discovery_pb2.DiscoveryRequest) -> bool:
        state = self.type_state(request.type_url)
        nonce = request.response_nonce
        # 1. A nonce that is not the latest we sent for this type answers a
        #    superseded response: the spec says ignore the request entirely
        #    (the client answers the newer response too).
        if nonce and nonce != state.nonce:
            self.log.debug("xds_stale_nonce", type_url=state.type_url, nonce=nonce)
            return False
        # 2. ACK or NACK of the latest response. NACK = error_detail set; the
        #    client keeps its last good config, and nothing is resent because
        #    of the NACK: only a new snapshot version triggers a push.
        if nonce:
            if request.HasField("error_detail"):
                detail = request.error_detail
                self.on_nack(state, nonce, detail.message, detail.code)
            else:
                self.on_ack(state, nonce, full_state=True)
        # 3. Subscription: "*" is an explicit wildcard; for LDS/CDS the legacy
        #    wildcard is an empty list on the first request, kept while the
        #    client keeps sending empty lists.
        names = frozenset(request.resource_names)
        first = not nonce and not state.responded
        changed = self._subscribe(state, names, first)
        # 4. A first request that reports the version we would send now is a
        #    reconnecting client already in sync: adopt that state, no push.
        if not nonce and request.version_info:
            self._adopt(state, request.version_info)
        # Named subscriptions changed (incl. re-subscribing a name dropped
        # earlier): the next round answers with the new set.
        return changed or not nonce

    @staticmethod
    def _subscribe(state: TypeState, names: frozenset[str], first: bool) -> bool:
        wildcard = WILDCARD in names or (
            not names and state.type_url in WILDCARD_TYPES and (first or state.wildcard)
        )
        names = names - {WILDCARD} if WILDCARD in names else names
        changed = wildcard != state.wildcard or names != state.names
        if changed:
            state.wildcard = wildcard
            # One set for every stream asking for the same names, freed
            # with the last of them (nodemesh.xds.cache.names).
            state.names = state.names_key = shared_names(names)
            state.resubscribed = True
        return changed

    def _adopt(self, state: TypeState, version_info: str) -> None:
        snapshot = self.source.snapshot(self.node_key)
        if snapshot is None:
            return
        view = self._view(state, snapshot, self.settings.absent_listeners)
        if view.version != version_info:
            return
        state.sent, state.sent_resources, state.acked = view.versions, view.resources, view.versions
        state.sent_version = state.acked_version = version_info
        state.responded = True
        # The client holds exactly what an answer to its subscription would
        # carry: no answer is owed (the full-state resubscribe rule in
        # build_response would otherwise push, unACKed, leaving it STALE).
        state.resubscribed = False
        self.log.info("xds_resume_in_sync", type_url=state.type_url, version=version_info)

    @staticmethod
    def _view(state: TypeState, snapshot: Snapshot, absent: bool = False) -> _View:
        """The wildcard view of the type (plus any names asked for besides,
        for resources served by name only); for named types only the
        requested names that exist (names not yet present are sent once
        they appear; a removed EDS/RDS resource is simply not sent)."""
        type_url = state.type_url
        if state.wildcard:
            hidden = snapshot.named_only.get(type_url)
            if not hidden or not (state.names_key & hidden):
                return _View(
                    snapshot.wildcard(type_url),
                    snapshot.versions(type_url),
                    snapshot.type_version(type_url),
                    shared=True,
                )
            resources = snapshot.wildcard_and(type_url, state.names_key & hidden)
            versions = {n: r.version for n, r in resources.items()}
            return _View(resources, versions, view_version(resources.values()), shared=False)
        view = snapshot.named_view(type_url, state.names_key)
        if type_url == LISTENER and absent and len(view.resources) < len(state.names_key):
            # gRPC clients need a Listener to fail fast on (see absent.py).
            resources = dict(view.resources)
            for name in sorted(state.names_key - view.resources.keys()):
                resources[name] = absent_listener(name)
            versions = {n: r.version for n, r in resources.items()}
            return _View(resources, versions, view_version(resources.values()), shared=False)
        return _View(view.resources, view.versions, view.version, shared=False, body=view.body)

    def build_response(self, state: TypeState, snapshot: Snapshot) -> bytes | None:
        view = self._view(state, snapshot, self.settings.absent_listeners)
        if state.type_url in _FULL_STATE:
            view = self._hold_removals(state, view, snapshot)
        # Endpoints of clusters updated in this round are resent even when
        # unchanged: Envoy keeps an updated cluster warming until it has them.
        refresh = bool(self.take_eds_refresh(state) & view.resources.keys())
        full_state = state.type_url in WILDCARD_TYPES
        # A full-state type (LDS, CDS) answers every subscription change, even
        # with the content it sent before: a requested name absent from the
        # response tells the client at once that it does not exist (gRPC's
        # xDS client would otherwise wait out its 15 s does-not-exist timer).
        resubscribed, state.resubscribed = state.resubscribed, False
        if not full_state and not state.wildcard and not state.names:
            # EDS/RDS with no names left: the client unsubscribed from the
            # type. Nothing is owed, and Envoy does not answer a response for
            # a type it no longer watches, so one would stay unACKed for ever
            # (status "pending"). It holds nothing of the type now.
            state.forget_all()
            return None
        # Nothing new: same content as the last response (or adopted state).
        if (
            state.responded
            and view.version == state.sent_version
            and not refresh
            and not (full_state and resubscribed)
        ):
            return None
        # EDS/RDS: an empty answer to names that do not exist yet says
        # nothing (absence is not deletion there); wait until they appear.
        if not view.resources and not state.responded and not state.wildcard and not full_state:
            return None
        if view.shared:
            body = snapshot.wildcard_body(state.type_url)  # encoded once, shared
        elif view.body is not None:
            body = view.body  # shared by streams asking for the same names
        else:
            body = b"".join(r.sotw_field for r in view.resources.values())
        nonce = self.next_nonce()
        payload = (
            length_delimited(_VERSION_INFO, view.version.encode())
            + body
            + length_delimited(_TYPE_URL, state.type_url.encode())
            + length_delimited(_NONCE, nonce.encode())
        )
        inflight = Inflight(nonce, view.version, time.monotonic(), view.versions)
        self.sent_response(state, inflight, len(view.resources), len(payload))
        if state.type_url == CLUSTER:
            self.note_cluster_updates(_updated(state.sent, view.versions), snapshot)
        state.sent, state.sent_resources = view.versions, view.resources
        return payload

    def _hold_removals(self, state: TypeState, view: _View, snapshot: Snapshot) -> _View:
        """Make-before-break: LDS and CDS responses are full state, so
        dropping a resource from one deletes it. Keep sending the ones
        `held_removals` says the client must keep (RDS and EDS are named:
        leaving a name out of their response deletes nothing)."""
        if state.sent is view.versions or state.sent_version == view.version:
            return view
        removed = self.held_removals(
            state, snapshot, set(state.sent_resources.keys() - view.resources.keys())
        )
        if not removed:
            return view
        resources = dict(view.resources)
        for name in sorted(removed):
            resources[name] = state.sent_resources[name]
        versions = {n: r.version for n, r in resources.items()}
        return _View(resources, versions, view_version(resources.values()), shared=False)


def _updated(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Names added or changed between two full-state responses."""
    if before is after:
        return []
    return [name for name, version in after.items() if before.get(name) != version]
