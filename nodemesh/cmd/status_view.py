"""`nodemesh status`: which Envoys are in sync, and why not.

The table reads like `istioctl proxy-status`: one row per connected Envoy,
one column per xDS type with its state and version. Below it come the
objects the control plane rejected and the NACKs clients sent, each naming
the object, field or node, so the reason a config is not live is on screen.

It reads `/debug/syncz` from the admin port, whose JSON shape is:

    {"model": {"version", "generation", "errors": [{"object", "field",
               "reason", "kept_previous"}], "warnings": [...same...]},
     "sources": [{"name", "errors": [str]}],
     "clients": [{"node", "cluster", "api", "types": {"CDS": {"state",
                  "version", "acked_version", "last_ack", "error"}}}],
     "routes": [{"object", "generation", "parents": [{"parent",
                 "controllerName", "conditions": [{"type", "status",
                 "reason", "message"}]}]}]}

"routes" are the Gateway API routes attached to Services, with the
status.parents entries nodemesh writes (or, for the file source, would write).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from nodemesh.cmd.terminal import terminal_safe
from nodemesh.xds.vocab import STATUS_COLUMNS

XDS_COLUMNS = STATUS_COLUMNS


class StatusError(Exception):
    """The admin port could not be read."""


def fetch_json(admin: str, path: str, timeout: float = 5.0) -> Any:
    """GET a JSON document from the admin port; HTTP errors carry the server's reason."""
    url = f"http://{admin}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            reason = json.load(exc).get("error", exc.reason)
        except ValueError:
            reason = exc.reason
        raise StatusError(f"{url}: HTTP {exc.code}: {reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StatusError(
            f"cannot read {url}: {exc} (is `nodemesh serve` running? --admin sets the address)"
        ) from exc


def fetch_syncz(admin: str, timeout: float = 5.0) -> Mapping[str, Any]:
    data: Mapping[str, Any] = fetch_json(admin, "/debug/syncz", timeout)
    return data


def _short(version: str | None) -> str:
    return (version or "-")[:10]


def _cell(type_state: Mapping[str, Any] | None) -> str:
    if not type_state:
        return "NOT_SENT"
    return f"{type_state.get('state', '?')} {_short(type_state.get('version'))}"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    rows = [[terminal_safe(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def format_status(syncz: Mapping[str, Any]) -> str:
    model = syncz.get("model", {})
    lines = [
        f"model version {_short(model.get('version'))} (generation {model.get('generation', '?')})",
        "",
    ]
    header = ["NODE", "API", *XDS_COLUMNS, "LAST ACK"]
    rows = [header]
    for client in sorted(syncz.get("clients", []), key=lambda c: str(c.get("node"))):
        types = client.get("types", {})
        acks = [t.get("last_ack") or "" for t in types.values()]
        rows.append(
            [
                str(client.get("node", "?")),
                str(client.get("api", "?")),
                *(_cell(types.get(col)) for col in XDS_COLUMNS),
                max(acks) if acks else "-",
            ]
        )
    if len(rows) == 1:
        lines.append("no Envoy is connected")
    else:
        lines.extend(_table(rows))
    datapath = syncz.get("datapath")
    if datapath is not None:
        lines += [
            "",
            f"datapath: model {_short(datapath.get('applied_model_version'))} in the kernel",
        ]
    lines.extend(_routes(syncz.get("routes") or []))
    lines.extend(_problems(syncz))
    # Each entry is one line; any newline or escape inside one came from a
    # client, a manifest or a file name, and is shown, not obeyed.
    return "\n".join(terminal_safe(line) for line in lines)


ROUTE_CONDITIONS = ("Accepted", "ResolvedRefs", "Programmed")


def _routes(routes: Sequence[Mapping[str, Any]]) -> list[str]:
    """One row per (route, Service parent); the reasons of what is not True below."""
    if not routes:
        return []
    rows = [["ROUTE", "PARENT", *(c.upper() for c in ROUTE_CONDITIONS)]]
    why: list[str] = []
    for route in routes:
        for parent in route.get("parents", []):
            conds = {c.get("type"): c for c in parent.get("conditions", [])}
            cells = []
            for name in ROUTE_CONDITIONS:
                cond = conds.get(name) or {}
                ok = cond.get("status") == "True"
                cells.append(f"{'True' if ok else 'False'} {cond.get('reason', '-')}")
                if not ok and cond:
                    message = " ".join(str(cond.get("message", "")).split())
                    why.append(f"  {route['object']} -> {parent['parent']}: {name}: {message}")
            rows.append([str(route.get("object")), str(parent.get("parent")), *cells])
    out = ["", "routes attached to Services (Gateway API):", *_table(rows)]
    if why:
        out += ["", "route conditions not met:", *why]
    return out


def _problems(syncz: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    model = syncz.get("model", {})
    rejected = [
        f"  {e['object']}: {e['field']}: {e['reason']}"
        + (" (previous version still serving)" if e.get("kept_previous") else "")
        for e in model.get("errors", [])
    ]
    if rejected:
        out += ["", "rejected objects:", *rejected]
    warnings = [f"  {w['object']}: {w['field']}: {w['reason']}" for w in model.get("warnings", [])]
    if warnings:
        out += ["", "warnings:", *warnings]
    source_errors = [
        f"  {s['name']}: {err}" for s in syncz.get("sources", []) for err in s.get("errors", [])
    ]
    if source_errors:
        out += ["", "source errors:", *source_errors]
    datapath_error = (syncz.get("datapath") or {}).get("error")
    if datapath_error:
        out += [
            "",
            "datapath not applied (previous plan still in the kernel):",
            f"  {datapath_error}",
        ]
    nacks = [
        f"  {c.get('node')} {name}: {str(t['error']).rstrip()}"
        for c in syncz.get("clients", [])
        for name, t in sorted(c.get("types", {}).items())
        if t.get("error")
    ]
    if nacks:
        out += ["", "rejected by Envoy (NACK):", *nacks]
    return out
