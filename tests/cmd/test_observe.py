"""`nodemesh observe` as a user runs it (a real process) against a real flow
server: hubble's columns, filters, exit 2 naming a bad flag, a warning for an
unknown pod."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from nodemesh.cmd.common import UsageError
from nodemesh.cmd.main import build_parser
from nodemesh.cmd.observe import build_request
from nodemesh.cmd.observe import observe as run
from nodemesh.cmd.observe_envoy import EnvoyAdminError, als_stats
from nodemesh.flows.collector import CollectorOptions, FlowCollector
from nodemesh.flows.service import FlowServer, FlowServerSettings
from tests.support.flows import V2, als_message, canary_model, http_entry, stream_access_logs

MODEL = canary_model()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[FlowServer]:
    collector = FlowCollector(CollectorOptions("node-a"), lambda: MODEL)
    flows = FlowServer(
        collector, FlowServerSettings(tmp_path / "als.sock", observer_address="127.0.0.1:0")
    )
    await flows.start()
    async with grpc.aio.insecure_channel(f"unix:{tmp_path / 'als.sock'}") as channel:

        async def one() -> AsyncIterator[bytes]:
            yield als_message(http_entry(), http_entry(V2, cluster="default/httpbin-v2", code=503))

        await stream_access_logs(channel)(one())
    try:
        yield flows
    finally:
        await flows.stop()


async def observe(
    server: FlowServer, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[str, str]:
    """The command in this process (its flags parsed by the real parser)."""
    parsed = build_parser().parse_args(["observe", *args])
    await run(server.observer_target, build_request(parsed), parsed.output)
    captured = capsys.readouterr()
    return captured.out, captured.err


async def test_table_has_hubbles_columns_and_the_chosen_cluster(
    server: FlowServer, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = await observe(server, capsys, "--last", "5")
    lines = out.splitlines()
    assert lines[0].split() == [
        "TIMESTAMP",
        "SOURCE",
        "DESTINATION",
        "TYPE",
        "VERDICT",
        "SUMMARY",
    ]
    assert "default/curl-1" in lines[1] and "default/httpbin-v1-a:8080" in lines[1]
    assert "-> default/httpbin-v2" in lines[2] and len(lines) == 3


async def test_filters_and_json(server: FlowServer, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = await observe(server, capsys, "-o", "json", "--http-status", "5+")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["flow"]["l7"]["http"]["code"] for r in rows] == [503]
    out, _ = await observe(
        server, capsys, "-o", "compact", "--not", "--to-service", "default/httpbin-v2"
    )
    assert len(out.splitlines()) == 1 and "httpbin-v1" in out


async def test_an_invalid_filter_exits_2_naming_the_flag(
    server: FlowServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real process: the exit code and the one line on stderr are the contract.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodemesh.cmd.main",
        "observe",
        "--server",
        server.observer_target,
        "--to-port",
        "http",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 2 and out == b""
    assert err.decode() == "nodemesh observe: --to-port: 'http' is not a port (1-65535)\n"


async def test_an_unknown_pod_returns_nothing_and_warns(
    server: FlowServer, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = await observe(server, capsys, "-o", "compact", "--from-pod", "default/ghost")
    assert out == "" and "warning" in err and "default/ghost" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--last", "3", "--first", "3"], "--last and --first"),
        (["--last", "0"], "--last: expected a positive number"),
        (["--since", "yesterday"], "--since: 'yesterday' is neither"),
        (["--pod", "default/curl", "--not"], "--not: must be followed"),
        (["--verdict", "ALLOWED"], "--verdict: 'ALLOWED' is not one of"),
        (["-t", "http"], "--type: 'http' is not one of"),
        (["--from-pod", "a/b/c"], "--from-pod:"),
    ],
)
def test_bad_flags_are_usage_errors_naming_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_request(build_parser().parse_args(["observe", *argv]))


def test_an_either_side_flag_is_two_filters_and_since_is_a_time() -> None:
    request = build_request(
        build_parser().parse_args(["observe", "--pod", "default/curl", "--since", "5m"])
    )
    assert [list(f.source_pod) for f in request.whitelist] == [["default/curl"], []]
    assert [list(f.destination_pod) for f in request.whitelist] == [[], ["default/curl"]]
    assert request.HasField("since") and not request.blacklist


def test_envoy_admin_without_status_is_a_usage_error() -> None:
    args = build_parser().parse_args(["observe", "--envoy-admin", "127.0.0.1:9901"])
    with pytest.raises(UsageError, match="--envoy-admin: only with --status"):
        args.func(args)


async def test_an_unreachable_envoy_admin_names_the_flag() -> None:
    # Port 1 on loopback: nothing listens there.
    with pytest.raises(EnvoyAdminError, match=r"--envoy-admin 127\.0\.0\.1:1: "):
        await als_stats("127.0.0.1:1")
