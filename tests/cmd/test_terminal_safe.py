"""Text from clients, manifests and file names never reaches the terminal
raw (issue 10, item 18): `nodemesh status`, command errors and console
logs show control characters as escapes."""

from __future__ import annotations

import io
import re
import sys

import pytest
import structlog

from nodemesh.cmd.logs import configure_logging
from nodemesh.cmd.main import dispatch
from nodemesh.cmd.status_view import format_status
from nodemesh.cmd.terminal import terminal_safe

TITLE = "\x1b]0;pwned\x07"  # sets the terminal's title
CLEAR = "\x1b[2J\x1b[H"  # clears the screen
BIDI = "\u202e"  # right-to-left override
# What a terminal would act on: every control but the line breaks we print.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_status_escapes_node_ids_nack_messages_and_reasons() -> None:
    syncz = {
        "model": {
            "version": "v",
            "generation": 1,
            "errors": [{"object": f"Service x/{BIDI}y", "field": "f", "reason": CLEAR}],
            "warnings": [],
        },
        "sources": [{"name": "files", "errors": [f"a{TITLE}.yaml: bad"]}],
        "clients": [
            {
                "node": f"node{TITLE}",
                "api": "delta",
                "types": {"LDS": {"state": "ERROR", "version": "b", "error": f"no\n{CLEAR}"}},
            }
        ],
        "datapath": {"applied_model_version": "v", "error": f"map{CLEAR}"},
    }
    text = format_status(syncz)
    assert not RAW.search(text), repr(text)
    assert "node\\x1b]0;pwned\\x07" in text
    assert "LDS: no\\n\\x1b[2J\\x1b[H" in text
    assert "x/\\u202ey" in text


def test_escapes_are_visible_and_plain_text_is_unchanged() -> None:
    assert terminal_safe("plain ü text") == "plain ü text"
    assert terminal_safe("a\tb\rc\x00\x9b") == "a\\tb\\rc\\x00\\x9b"


def test_command_errors_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    def fail(_: object) -> int:
        raise ValueError(f"bad{TITLE}")

    assert dispatch("status", fail, object()) == 1  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert not RAW.search(err) and "bad\\x1b]0;pwned\\x07" in err


def test_console_logs_are_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    try:
        configure_logging("info", json=False)
        structlog.get_logger("t").warning("xds_nack", node_id=f"n{TITLE}", error=CLEAR)
    finally:
        structlog.reset_defaults()
    text = out.getvalue()
    # The console renderer colours its own output: drop its SGR codes first.
    ours = re.sub("\x1b\\[[0-9;]*m", "", text)
    assert not RAW.search(ours.rstrip("\n")), repr(text)
    assert "n\\x1b]0;pwned\\x07" in ours
