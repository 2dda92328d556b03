"""Node identity on the xDS port: the node id a client claims must be one its
TLS client certificate names.

Without this, any client holding a certificate the CA signed could claim
`node.id = node-b` and receive node-b's configuration. With a rule set
(`StreamSettings.node_identity`; `nodemesh serve --require-client-cert`
sets the default one), the first request of every TLS stream is checked:

- the certificate's URI SANs are matched against `uri_patterns` and its DNS
  SANs against `dns_patterns`. A pattern is the SAN with `{node}` where the
  node id stands, e.g. `spiffe://cluster.local/nodemesh/node/{node}`
  (a SPIFFE ID) or `{node}.node.nodemesh.internal` (a DNS name). `{node}`
  matches one or more characters except `/`; everything else is literal.
- the node ids so found are the ones the client may claim. Claiming another
  ends the stream with PERMISSION_DENIED naming both ids, counts in
  `nodemesh_xds_identity_refused_total{reason="mismatch"}` and logs
  `xds_identity_refused`. A certificate with no SAN matching any pattern is
  refused the same way (reason "no_usable_san"), the message listing the
  accepted forms.

Streams without TLS (the node-local Unix socket, a plain TCP port) are not
checked: their peers have no certificate, and the socket's file mode is what
guards them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from nodemesh.xds.metrics import IDENTITY_REFUSED
from nodemesh.xds.server.errors import XdsServerError

NODE = "{node}"
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_URI_PATTERN = f"spiffe://{DEFAULT_TRUST_DOMAIN}/nodemesh/node/{NODE}"
# grpc core's auth context properties for a verified peer certificate.
_PEER_URI = "peer_uri"
_PEER_DNS = "peer_dns"
_SECURITY = "transport_security_type"


class IdentityRefused(XdsServerError):
    """The client's certificate does not entitle it to the node id it claims."""

    code = grpc.StatusCode.PERMISSION_DENIED

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _compile(pattern: str, kind: str) -> re.Pattern[str]:
    if pattern.count(NODE) != 1:
        raise ValueError(f"{kind} pattern {pattern!r} must contain {NODE} exactly once")
    before, after = pattern.split(NODE)
    return re.compile(f"^{re.escape(before)}(?P<node>[^/]+){re.escape(after)}$")


@dataclass(frozen=True, slots=True)
class NodeIdentityRule:
    """Which certificate SANs name which node ids (see the module doc)."""

    uri_patterns: tuple[str, ...] = (DEFAULT_URI_PATTERN,)
    dns_patterns: tuple[str, ...] = ()
    _compiled: tuple[tuple[str, re.Pattern[str]], ...] = field(
        default=(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        compiled = tuple(("URI", _compile(p, "URI SAN")) for p in self.uri_patterns) + tuple(
            ("DNS", _compile(p, "DNS SAN")) for p in self.dns_patterns
        )
        if not compiled:
            raise ValueError("a node identity rule needs at least one URI or DNS SAN pattern")
        object.__setattr__(self, "_compiled", compiled)

    @classmethod
    def for_trust_domain(
        cls, trust_domain: str, dns_patterns: Sequence[str] = ()
    ) -> NodeIdentityRule:
        """The SPIFFE form `spiffe://<trust_domain>/nodemesh/node/{node}`."""
        return cls((f"spiffe://{trust_domain}/nodemesh/node/{NODE}",), tuple(dns_patterns))

    def accepted_forms(self) -> str:
        forms = [f"URI SAN {p}" for p in self.uri_patterns]
        forms += [f"DNS SAN {p}" for p in self.dns_patterns]
        return ", ".join(forms)

    def node_ids(self, uris: Sequence[str], dns_names: Sequence[str]) -> list[str]:
        """Node ids the SANs name, in pattern order."""
        found: list[str] = []
        for kind, pattern in self._compiled:
            for san in uris if kind == "URI" else dns_names:
                match = pattern.match(san)
                if match is not None and match["node"] not in found:
                    found.append(match["node"])
        return found

    def check(self, claimed: str, auth: Mapping[str, Sequence[bytes]]) -> None:
        """Raise IdentityRefused unless a TLS peer's certificate names
        `claimed`; peers without TLS pass (see the module doc)."""
        if b"ssl" not in auth.get(_SECURITY, ()):
            return
        uris = [v.decode(errors="replace") for v in auth.get(_PEER_URI, ())]
        dns_names = [v.decode(errors="replace") for v in auth.get(_PEER_DNS, ())]
        allowed = self.node_ids(uris, dns_names)
        if not allowed:
            sans = ", ".join([*(f"URI:{u}" for u in uris), *(f"DNS:{d}" for d in dns_names)])
            raise IdentityRefused(
                f"client certificate has no SAN naming a node (it has: {sans or 'none'}); "
                f"accepted: {self.accepted_forms()}",
                "no_usable_san",
            )
        if claimed not in allowed:
            raise IdentityRefused(
                f"node.id {claimed!r} is not the node the client certificate names "
                f"({', '.join(repr(n) for n in allowed)})",
                "mismatch",
            )


def check_node_identity(
    rule: NodeIdentityRule | None,
    node_id: str,
    context: grpc.aio.ServicerContext[Any, Any],
    log: Any,
) -> None:
    """A stream's check of its first request: raise IdentityRefused (after
    counting and logging it) unless `rule` is None or the peer's certificate
    names `node_id`. Recorded here, not through the server callbacks: a
    refused stream never opens, so no callback sees it."""
    if rule is None:
        return
    try:
        rule.check(node_id, context.auth_context())
    except IdentityRefused as exc:
        IDENTITY_REFUSED.labels(reason=exc.reason).inc()
        log.warning("xds_identity_refused", node_id=node_id, reason=exc.reason, error=str(exc))
        raise
