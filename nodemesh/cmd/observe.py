"""`nodemesh observe`: a node's flows, as `hubble observe` shows Cilium's.

Reads the agent's Observer service (GetFlows). Output `-o table` (TIMESTAMP,
SOURCE, DESTINATION, TYPE, VERDICT, SUMMARY), `-o compact` (one line per
flow) or `-o json` (one GetFlowsResponse per line). Lost events are printed
in the stream where they happened, never dropped silently.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from nodemesh._gen.nodemesh.v1 import flow_pb2, observer_pb2
from nodemesh.cmd.common import UsageError, split_host_port, until_signalled
from nodemesh.cmd.observe_envoy import EnvoyAdminError, als_stats, format_als
from nodemesh.cmd.observe_filters import add_filter_flags, build_filters
from nodemesh.flows import text
from nodemesh.flows.service import WARNING_KEY
from nodemesh.flows.servicemap import ServiceMap
from nodemesh.flows.ui import MapServer

# Where `nodemesh agent run --xds-socket /var/run/nodemesh/xds.sock` serves it.
DEFAULT_SERVER = "unix:/var/run/nodemesh/observer.sock"


class ObserveError(Exception):
    """The Observer could not be reached or failed: exit 1, one line."""


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    observe = sub.add_parser(
        "observe", parents=[parent], help="recent and live flows of a node (like hubble observe)"
    )
    observe.add_argument(
        "--server", default=DEFAULT_SERVER, help="the agent's Observer: host:port or unix:PATH"
    )
    observe.add_argument("-o", "--output", choices=["table", "compact", "json"], default="table")
    observe.add_argument("-f", "--follow", action="store_true", help="keep streaming new flows")
    observe.add_argument("--last", type=int, metavar="N", help="the last N flows held")
    observe.add_argument("--first", type=int, metavar="N", help="the first N flows held")
    observe.add_argument("--since", help="RFC 3339 time, or a duration ago (30s, 5m, 2h)")
    observe.add_argument("--until", help="RFC 3339 time, or a duration ago")
    observe.add_argument("--status", action="store_true", help="ServerStatus: held, seen, lost")
    observe.add_argument(
        "--envoy-admin",
        metavar="HOST:PORT",
        help="with --status: also the node Envoy's access-log loss, from its admin port",
    )
    observe.add_argument(
        "--ui", action="store_true", help="serve the live service-map page instead of printing"
    )
    observe.add_argument(
        "--ui-address", default="127.0.0.1:12000", help="host:port of the page (--ui)"
    )
    add_filter_flags(observe)
    observe.set_defaults(func=run_observe)


def parse_time(value: str, flag: str) -> datetime:
    units = {"s": 1, "m": 60, "h": 3600}
    if value[:-1].isdigit() and value[-1:] in units:
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{flag}: {value!r} is neither RFC 3339 nor a duration (30s, 5m, 2h)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def build_request(args: argparse.Namespace) -> observer_pb2.GetFlowsRequest:
    if args.last is not None and args.first is not None:
        raise UsageError("--last and --first: choose one")
    for flag in ("last", "first"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag}: expected a positive number, got {value}")
    if getattr(args, "negate_next", False):
        raise UsageError("--not: must be followed by a filter flag")
    allow, deny = build_filters(args.filter_terms)
    request = observer_pb2.GetFlowsRequest(follow=args.follow, whitelist=allow, blacklist=deny)
    if args.last is not None:
        request.number = args.last
    if args.first is not None:
        request.number, request.first = args.first, True
    for flag in ("since", "until"):
        value = getattr(args, flag)
        if value is not None:
            getattr(request, flag).FromDatetime(parse_time(value, f"--{flag}"))
    return request


class Printer:
    """Prints responses as they come; a table is aligned once, at the end,
    unless following (then each row is printed at once, tab-separated)."""

    def __init__(self, output: str, follow: bool) -> None:
        self.output, self.follow = output, follow
        self.rows: list[flow_pb2.Flow] = []
        if output == "table" and follow:
            print("\t".join(text.TABLE_COLUMNS), flush=True)

    def add(self, response: observer_pb2.GetFlowsResponse) -> None:
        if self.output == "json":
            print(text.as_json(response), flush=True)
        elif response.HasField("lost_events"):
            print(text.lost(response.lost_events), flush=True)
        elif self.output == "compact":
            print(text.compact(response.flow), flush=True)
        elif self.follow:
            print("\t".join(text.row(response.flow)), flush=True)
        else:
            self.rows.append(response.flow)

    def close(self) -> None:
        if self.output == "table" and not self.follow:
            print(text.table(self.rows), flush=True)


async def observe(server: str, request: observer_pb2.GetFlowsRequest, output: str) -> None:
    printer = Printer(output, request.follow)
    async with grpc.aio.insecure_channel(server) as channel:
        method = channel.unary_stream(
            "/nodemesh.v1.Observer/GetFlows",
            request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
            response_deserializer=observer_pb2.GetFlowsResponse.FromString,
        )
        call = method(request)
        try:
            for key, value in await call.initial_metadata() or ():
                if key == WARNING_KEY:
                    print(f"nodemesh observe: warning: {value}", file=sys.stderr)
            async for response in call:
                printer.add(response)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise UsageError(exc.details() or "invalid filter") from exc
            raise ObserveError(f"Observer at {server}: {exc.code().name}: {exc.details()}") from exc
        except asyncio.CancelledError:
            printer.close()  # interrupted: show what came
            raise
        printer.close()


async def status(server: str) -> observer_pb2.ServerStatusResponse:
    async with grpc.aio.insecure_channel(server) as channel:
        method = channel.unary_unary(
            "/nodemesh.v1.Observer/ServerStatus",
            request_serializer=observer_pb2.ServerStatusRequest.SerializeToString,
            response_deserializer=observer_pb2.ServerStatusResponse.FromString,
        )
        try:
            return await method(observer_pb2.ServerStatusRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise ObserveError(f"Observer at {server}: {exc.code().name}: {exc.details()}") from exc


def format_status(reply: observer_pb2.ServerStatusResponse) -> str:
    return (
        f"Current/Max Flows: {reply.num_flows}/{reply.max_flows}\n"
        f"Flows seen: {reply.seen_flows}\n"
        f"Lost: {reply.lost_kernel_events} kernel events, "
        f"{reply.lost_malformed_access_logs} malformed access logs, "
        f"{reply.lost_follower_events} to slow followers\n"
        f"Sampled out: {reply.sampled_out}\nFollowers: {reply.followers}"
    )


async def serve_ui(server: str, request: observer_pb2.GetFlowsRequest, address: str) -> None:
    """The service-map page, fed by the agent's GetFlows stream (following)."""
    host, port = split_host_port(address, "--ui-address")
    service_map = ServiceMap()
    page = MapServer(service_map, host, port)
    await page.start()
    print(f"service map: {page.url}", flush=True)
    request.follow = True
    try:
        async with grpc.aio.insecure_channel(server) as channel:
            method = channel.unary_stream(
                "/nodemesh.v1.Observer/GetFlows",
                request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
                response_deserializer=observer_pb2.GetFlowsResponse.FromString,
            )
            async for response in method(request):
                if response.HasField("flow"):
                    service_map.add(response.flow)
    except grpc.aio.AioRpcError as exc:
        raise ObserveError(f"Observer at {server}: {exc.code().name}: {exc.details()}") from exc
    finally:
        await page.stop()


def run_observe(args: argparse.Namespace) -> int:
    if args.ui:
        request = build_request(args)
        asyncio.run(until_signalled(serve_ui(args.server, request, args.ui_address), "observe-ui"))
        return 0
    if args.envoy_admin and not args.status:
        raise UsageError("--envoy-admin: only with --status")
    if args.status:
        print(format_status(asyncio.run(status(args.server))))
        if args.envoy_admin:
            try:
                print(format_als(asyncio.run(als_stats(args.envoy_admin))))
            except EnvoyAdminError as exc:
                raise ObserveError(str(exc)) from exc
        return 0
    request = build_request(args)
    asyncio.run(until_signalled(observe(args.server, request, args.output), "observe"))
    return 0
