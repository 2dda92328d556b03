"""Proxy port allocation for the node-local Envoy's redirect listeners.

Stability guarantee: the port of a listener is a pure function of the set of
listener names in the model. Each name hashes (SHA-256) to a home slot in
[PROXY_PORT_MIN, PROXY_PORT_MAX); names are placed in sorted order, and a name
whose slot is taken probes upwards (wrapping) to the next free one. Hence:

- the same model gives the same ports on every restart, on every replica and
  on every node, without any state kept between runs;
- two listeners never share a port, and reserved ports are never handed out;
- adding or removing a listener moves no other listener unless that other one
  sits on a probe chain that starts at or passes the changed listener's home
  slot (with a few dozen listeners among 10,000 slots, rare).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable

from nodemesh.model.errors import PortAllocationError

PROXY_PORT_MIN = 10000
PROXY_PORT_MAX = 20000  # exclusive


def home_port(listener: str, low: int = PROXY_PORT_MIN, high: int = PROXY_PORT_MAX) -> int:
    """Where `listener` lands when nothing else is in the way."""
    digest = hashlib.sha256(listener.encode()).digest()
    return low + int.from_bytes(digest[:8], "big") % (high - low)


def allocate_proxy_ports(
    listeners: Iterable[str],
    reserved: Collection[int] = (),
    low: int = PROXY_PORT_MIN,
    high: int = PROXY_PORT_MAX,
) -> dict[str, int]:
    """A port per distinct listener name; see the module docstring for why it is stable.

    Raises PortAllocationError when the names outnumber the free ports.
    """
    names = sorted(set(listeners))
    size = high - low
    taken = {p for p in reserved if low <= p < high}
    if len(names) > size - len(taken):
        raise PortAllocationError(
            f"{len(names)} redirect listeners do not fit in ports {low}-{high - 1}"
            f" ({len(taken)} reserved)"
        )
    out: dict[str, int] = {}
    for name in names:
        port = home_port(name, low, high)
        while port in taken:
            port = low + (port - low + 1) % size
        taken.add(port)
        out[name] = port
    return out
