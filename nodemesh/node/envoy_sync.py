"""What the node Envoy's answer to a published model can be, as the datapath
follower waits for it: an ACK (the wait returns), a timeout
(`TimeoutError`), or a rejection (`EnvoyRejected`). Its own module so the
control plane can raise it without importing the datapath (eBPF) code."""

from __future__ import annotations


class EnvoyRejected(Exception):
    """Envoy answered the published model and rejected part of it (NACK):
    waiting longer cannot bring its ACK, only a new model can."""
