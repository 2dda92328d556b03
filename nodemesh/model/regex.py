"""Is this regex one Envoy accepts? Checked with RE2 itself (google-re2).

Envoy's `safe_regex` is RE2, and a RouteConfiguration with one bad regex is
NACKed whole, so the model checks every regex it will hand to Envoy before
accepting the object that carries it. Envoy also refuses programs larger than
its `re2.max_program_size.error_level` runtime value (100 by default), which
RE2 measures as ProgramSize; the same limit applies here.
"""

from __future__ import annotations

import functools
from typing import Any

import re2  # type: ignore[import-untyped]

ENVOY_MAX_PROGRAM_SIZE = 100
_OPTIONS: Any = re2.Options()
_OPTIONS.log_errors = False  # the reason is returned; RE2's own log goes to stderr


@functools.lru_cache(maxsize=4096)
def re2_problem(regex: str) -> str | None:
    """Why Envoy would reject `regex` (None: it would accept it)."""
    try:
        compiled = re2.compile(regex, _OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        return f"{regex!r} is not an RE2 regular expression: {detail}"
    size = compiled._regexp.ProgramSize()
    if size > ENVOY_MAX_PROGRAM_SIZE:
        return (
            f"{regex!r} compiles to an RE2 program of size {size}, over Envoy's limit of "
            f"{ENVOY_MAX_PROGRAM_SIZE} (re2.max_program_size.error_level)"
        )
    return None
