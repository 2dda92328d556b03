"""Narrow a protobuf Message to its concrete class, checked at run time.

The translator and the cache hand out resources as `Message`; a test reads
fields of the concrete class (a Listener's filter chains, a Cluster's type).
`narrow` asserts the class, so a wrong resource fails with its name, and mypy
sees the concrete class. (xds-protos ships no stubs, so the Envoy classes are
`Any` to mypy; the run-time check is the real one.)
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


def narrow(message: Message, cls: type[M]) -> M:
    assert isinstance(message, cls), f"expected {cls.__name__}, got {type(message).__name__}"
    return message
