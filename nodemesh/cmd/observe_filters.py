"""`nodemesh observe` filter flags -> GetFlows allow and deny filters.

Flags are named as `hubble observe`'s where they mean the same:
- `--from-X V` / `--to-X V` filter the source / destination side;
- `--X V` (`--pod`, `--namespace`, `--service`, `--workload`, `--port`,
  `--ip`) matches either side: each such flag doubles the filters, one
  variant per side, as Hubble's do;
- `--verdict`, `--type`, `--http-status` apply to the whole flow;
- `--not` negates the next filter flag: it goes to the deny list.
Repeating a flag ORs its values.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from nodemesh._gen.nodemesh.v1 import flow_pb2, observer_pb2
from nodemesh.cmd.common import UsageError
from nodemesh.flows.filters import FilterError, check

SIDED = {  # flag stem -> FlowFilter field stem
    "pod": "pod",
    "namespace": "namespace",
    "service": "service",
    "workload": "workload",
    "port": "port",
    "ip": "ip",
}
VERDICTS = {"FORWARDED", "DROPPED", "ERROR", "REDIRECTED"}
TYPES = {"l7": flow_pb2.L7, "l3-l4": flow_pb2.L3_L4, "trace": flow_pb2.L3_L4}

Term = tuple[bool, str, str]  # (negated, flag, value)


class _FilterFlag(argparse.Action):
    def __call__(
        self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        terms: list[Term] = getattr(namespace, "filter_terms", None) or []
        negated = bool(getattr(namespace, "negate_next", False))
        terms.append((negated, self.dest.removeprefix("f_"), str(values)))
        namespace.filter_terms = terms
        namespace.negate_next = False


class _Not(argparse.Action):
    def __call__(
        self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        namespace.negate_next = True


def add_filter_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (as hubble observe's)")
    group.add_argument("--not", nargs=0, action=_Not, help="negate the next filter flag")
    for stem in SIDED:
        for prefix, side in (("", "either side"), ("from-", "the source"), ("to-", "the dest")):
            flag = f"--{prefix}{stem}"
            group.add_argument(
                flag,
                dest=f"f_{prefix}{stem}",
                action=_FilterFlag,
                metavar=stem.upper(),
                help=f"{stem} of {side}",
            )
    group.add_argument(
        "--verdict",
        dest="f_verdict",
        action=_FilterFlag,
        metavar="VERDICT",
        help="FORWARDED, DROPPED, ERROR or REDIRECTED",
    )
    group.add_argument(
        "-t", "--type", dest="f_type", action=_FilterFlag, metavar="TYPE", help="l7 or l3-l4"
    )
    group.add_argument(
        "--http-status",
        dest="f_http-status",
        action=_FilterFlag,
        metavar="CODE",
        help="a status (404) or a class (5+)",
    )
    parser.set_defaults(filter_terms=[], negate_next=False)


def _flag_error(flag: str, reason: str) -> UsageError:
    return UsageError(f"--{flag}: {reason}")


def _apply(flow_filter: observer_pb2.FlowFilter, flag: str, value: str, side: str) -> None:
    if flag == "verdict":
        if value.upper() not in VERDICTS:
            raise _flag_error(flag, f"{value!r} is not one of {', '.join(sorted(VERDICTS))}")
        flow_filter.verdict.append(flow_pb2.Verdict.Value(value.upper()))
    elif flag == "type":
        if value.lower() not in TYPES:
            raise _flag_error(flag, f"{value!r} is not one of {', '.join(sorted(TYPES))}")
        flow_filter.type.append(TYPES[value.lower()])
    elif flag == "http-status":
        flow_filter.http_status_code.append(value)
    else:
        stem = flag.removeprefix("from-").removeprefix("to-")
        getattr(flow_filter, f"{side}_{SIDED[stem]}").append(value)


def _variants(terms: Sequence[Term]) -> list[observer_pb2.FlowFilter]:
    filters = [observer_pb2.FlowFilter()]
    for _, flag, value in terms:
        if flag.startswith("from-"):
            sides = ["source"]
        elif flag.startswith("to-"):
            sides = ["destination"]
        elif flag in SIDED:
            sides = ["source", "destination"]
        else:
            sides = ["source"]  # whole-flow flags: the side is ignored
        forked = []
        for base in filters:
            for side in sides:
                copy = observer_pb2.FlowFilter()
                copy.CopyFrom(base)
                _apply(copy, flag, value, side)
                forked.append(copy)
        filters = forked
    return filters


def build_filters(
    terms: Sequence[Term],
) -> tuple[list[observer_pb2.FlowFilter], list[observer_pb2.FlowFilter]]:
    """(allow, deny). A bad value is a UsageError naming its flag (exit 2)."""
    allow_terms = [t for t in terms if not t[0]]
    deny_terms = [t for t in terms if t[0]]
    allow = _variants(allow_terms) if allow_terms else []
    deny = [f for t in deny_terms for f in _variants([t])]
    for negated, flag, value in terms:
        one = _variants([(negated, flag, value)])
        try:
            check(one)
        except FilterError as exc:
            raise _flag_error(flag, exc.reason) from exc
    return allow, deny
