"""Text that reaches an operator's terminal is made safe first.

Node ids, NACK messages, object names, file names and reasons come from
clients, manifests and the file system. Printed raw, an escape sequence in
one of them can rewrite the screen, hide lines or change the terminal's
title. `terminal_safe` shows every control character (C0, DEL, C1) and
every bidirectional override as a visible escape, so what is printed is
what was there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

# C0 controls, DEL, C1 controls, and the Unicode bidi embeddings, overrides
# and isolates (they reorder what follows them on the line).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def terminal_safe(text: object) -> str:
    """`str(text)` with every control character shown as an escape."""
    return _UNSAFE.sub(_escape, str(text))


def safe_log_values(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> Mapping[str, Any]:
    """structlog processor for the console renderer (JSON escapes on its own)."""
    for key, value in event.items():
        if isinstance(value, str) and key != "exception":
            event[key] = terminal_safe(value)
    return event
