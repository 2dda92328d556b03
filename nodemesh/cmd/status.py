"""`nodemesh status` and `nodemesh config-dump`: what a running control plane
(or node agent) holds, read from its admin port."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

import yaml

from nodemesh.cmd.common import add_admin_address
from nodemesh.cmd.serve import DEFAULT_ADMIN
from nodemesh.cmd.status_view import fetch_json, fetch_syncz, format_status
from nodemesh.xds.vocab import ALIASES


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    status = sub.add_parser(
        "status", parents=[parent], help="which Envoys are in sync, and why not"
    )
    add_admin_address(status, DEFAULT_ADMIN, "the control plane's admin host:port")
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.set_defaults(func=run_status)

    dump = sub.add_parser(
        "config-dump", parents=[parent], help="what the server holds for one node"
    )
    dump.add_argument("--node-id", "--node", dest="node_id", required=True, help="Envoy node id")
    dump.add_argument("--type", choices=sorted(ALIASES))
    dump.add_argument("-o", "--output", choices=["json", "yaml"], default="json")
    add_admin_address(dump, DEFAULT_ADMIN, "the control plane's admin host:port")
    dump.set_defaults(func=run_config_dump)


def run_status(args: argparse.Namespace) -> int:
    syncz = fetch_syncz(args.admin)
    print(
        json.dumps(syncz, indent=2, sort_keys=True)
        if args.output == "json"
        else format_status(syncz)
    )
    return 0


def run_config_dump(args: argparse.Namespace) -> int:
    query = {"node": args.node_id, **({"type": args.type} if args.type else {})}
    dump = fetch_json(args.admin, "/debug/config_dump?" + urllib.parse.urlencode(query))
    if args.output == "yaml":
        print(yaml.safe_dump(dump, sort_keys=True), end="")
    else:
        print(json.dumps(dump, indent=2, sort_keys=True))
    return 0
