"""The xDS server's NACKs as the Kubernetes reporter's `NackSource`.

Wiring-level glue (it imports both sides, which the subpackages never do):
`XdsNacks(server.clients)` reports, for every connected Envoy and type, the
resources that Envoy currently rejects, with Envoy's own message. A NACK the
client later ACKs past is no longer reported, so Programmed flips back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from nodemesh.k8s_watch.conditions import NackReport
from nodemesh.xds.server.status import ClientStatus, ConfigStatus


class XdsNacks:
    def __init__(self, clients: Callable[[], Iterable[ClientStatus]]) -> None:
        self._clients = clients

    def nacks(self) -> list[NackReport]:
        out = []
        for client in self._clients():
            for type_url, status in sorted(client.types.items()):
                rejected = tuple(r.name for r in status.resources if r.status is ConfigStatus.ERROR)
                if rejected:
                    message = status.last_nack_error or "rejected (no message from Envoy)"
                    out.append(NackReport(client.node_id, type_url, rejected, message))
        return out
