"""Security identities: numbers for label sets, reserved ones for the rest.

Numbering follows Cilium where it can:

- reserved identities 1-8 (host 1, world 2, unmanaged 3, health 4, init 5,
  remote-node 6, kube-apiserver 7, ingress 8);
- label-derived identities in 256 .. 2^24-1, computed from a hash of the
  sorted security-relevant labels, so every node with the same model gets
  the same numbers with no coordination (Cilium allocates through its
  kvstore/CRDs instead: nodemesh has no shared allocator);
- CIDR identities in Cilium's node-local scope, 2^24 | n, from a hash of
  the prefix.

Collisions (two label sets hashing to one number) are resolved by probing
upward in the order of the label sets' canonical text, so the result depends
only on the set of label sets, never on the order they were seen in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

HOST = 1
WORLD = 2
UNMANAGED = 3
HEALTH = 4
INIT = 5
REMOTE_NODE = 6
KUBE_APISERVER = 7
INGRESS = 8
# Policy keys use 0 for "any remote identity" (a wildcard, never an identity).
ANY = 0

RESERVED_NAMES = {
    HOST: "reserved:host",
    WORLD: "reserved:world",
    UNMANAGED: "reserved:unmanaged",
    HEALTH: "reserved:health",
    INIT: "reserved:init",
    REMOTE_NODE: "reserved:remote-node",
    KUBE_APISERVER: "reserved:kube-apiserver",
    INGRESS: "reserved:ingress",
}

FIRST_LABELS = 256
LABELS_SPACE = (1 << 24) - FIRST_LABELS
LOCAL_SCOPE = 1 << 24
LOCAL_SPACE = (1 << 24) - 1


def canonical(labels: Iterable[tuple[str, str]]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(labels))


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _allocate(texts: Iterable[str], base: int, space: int) -> dict[str, int]:
    """text -> number in [base, base + space), hash first, probing on collision."""
    out: dict[str, int] = {}
    taken: set[int] = set()
    unique = sorted(set(texts))
    if len(unique) > space:
        raise ValueError(f"{len(unique)} identities do not fit in {space}")
    for text in unique:
        offset = _hash(text) % space
        while base + offset in taken:
            offset = (offset + 1) % space
        taken.add(base + offset)
        out[text] = base + offset
    return out


def label_identities(label_sets: Iterable[tuple[tuple[str, str], ...]]) -> dict[str, int]:
    """canonical label text -> identity, for every distinct label set."""
    return _allocate((canonical(s) for s in label_sets), FIRST_LABELS, LABELS_SPACE)


def cidr_identities(prefixes: Iterable[str]) -> dict[str, int]:
    """prefix text ("10.0.0.0/8") -> node-local CIDR identity."""
    return _allocate(prefixes, LOCAL_SCOPE + 1, LOCAL_SPACE - 1)


def describe(identity: int) -> str:
    if identity == ANY:
        return "any"
    return RESERVED_NAMES.get(identity, str(identity))
