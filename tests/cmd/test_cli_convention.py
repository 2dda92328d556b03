"""The command-line convention (nodemesh/cmd/common.py): one flag name per
thing, exit 2 with one line for usage and configuration errors, no traceback,
`--log-level` everywhere, SIGTERM as a clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nodemesh.cmd.main import build_parser, main
from tests.support.polling import wait_until

COMMANDS = [
    ["serve"],
    ["status"],
    ["config-dump", "--node-id", "n"],
    ["translate", "--source-dir", "."],
    ["demo"],
    ["agent", "run"],
    ["agent", "datapath"],
    ["agent", "dump"],
    ["agent", "cleanup"],
    ["k8s-watch"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_command_takes_log_level(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv, "--log-level", "debug"])
    assert args.log_level == "debug"


def test_a_commands_own_default_log_level_stays_its_own() -> None:
    # argparse shares a parent parser's actions: demo's "warning" default
    # once leaked into every command, and the agent logged nothing.
    parser = build_parser()
    assert parser.parse_args(["demo"]).log_level == "warning"
    assert parser.parse_args(["agent", "datapath"]).log_level == "info"
    assert parser.parse_args(["serve"]).log_level == "info"


def test_same_flag_names_for_the_same_thing() -> None:
    parser = build_parser()
    assert parser.parse_args(["k8s-watch", "--k8s-server", "u", "--node-name", "a"]).k8s_server
    serve = parser.parse_args(["serve", "--kubernetes", "--k8s-server", "u", "--no-report-status"])
    assert serve.k8s_server == "u" and serve.report_status is False
    watch = parser.parse_args(["k8s-watch", "--report-status"])
    assert watch.report_status is True
    assert parser.parse_args(["serve", "--admin-address", "h:1"]).admin == "h:1"
    assert parser.parse_args(["status", "--admin-address", "h:1"]).admin == "h:1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve"], "nodemesh serve: give --source-dir DIR, --kubernetes, or both"),
        (
            ["serve", "--source-dir", ".", "--admin-address", "nope"],
            "nodemesh serve: --admin-address: expected host:port, got 'nope'",
        ),
        (
            ["serve", "--source-dir", ".", "--tls-cert", "/missing.pem"],
            "nodemesh serve: --tls-cert and --tls-key go together",
        ),
        (
            ["agent", "run", "--model-dir", "."],
            "nodemesh agent run: the node agent serves its Envoy: give --xds-socket or",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_bug_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nodemesh.cmd import status

    def crash(_: object) -> int:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(status, "fetch_syncz", crash)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nodemesh status: internal error: ZeroDivisionError: boom")
    assert err.count("\n") == 1 and "Traceback" not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float) -> None:
    def port_open() -> bool:
        assert proc.poll() is None, proc.communicate()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(port_open, what="serve to open its admin port", timeout=timeout)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_cleanly_on_a_signal(sig: signal.Signals, tmp_path: Path) -> None:
    admin = _free_port()
    argv = [
        sys.executable,
        "-m",
        "nodemesh",
        "serve",
        "--source-dir",
        str(tmp_path),
        "--xds-address",
        f"127.0.0.1:{_free_port()}",
        "--admin-address",
        f"127.0.0.1:{admin}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        _wait_for_port(admin, proc, timeout=60)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
