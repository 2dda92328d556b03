"""`nodemesh translate`: the Envoy resources a directory of manifests becomes,
offline (no server, no Envoy), with every error and warning.

For users' CI and for debugging a CiliumEnvoyConfig before applying it: the
manifests go through the same file parser, model store and translator as
`nodemesh serve`, and the exit status is 1 when anything was rejected.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from nodemesh.cmd.logs import configure_logging
from nodemesh.model.objects import pairs
from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource
from nodemesh.xds.translate import TranslateOptions, translate, validate_envoy_config
from nodemesh.xds.vocab import ALIASES, type_url_of


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    command = sub.add_parser(
        "translate",
        parents=[parent],
        help="print the Envoy resources a directory of manifests becomes",
    )
    command.add_argument("--source-dir", type=Path, required=True, help="YAML manifests")
    command.add_argument("--type", choices=sorted(ALIASES), help="only this resource type")
    command.add_argument("--node-name", help="node name (CECs with a nodeSelector apply per node)")
    command.add_argument(
        "--node-label", action="append", default=[], metavar="KEY=VALUE", help="node label"
    )
    command.add_argument("--listener-address", default="127.0.0.1")
    command.add_argument("-o", "--output", choices=["json", "yaml"], default="yaml")
    command.set_defaults(func=run_translate, log_level="warning")


def _options(args: argparse.Namespace) -> TranslateOptions:
    labels = dict(label.partition("=")[::2] for label in args.node_label)
    return TranslateOptions(
        listener_address=args.listener_address,
        node_name=args.node_name,
        node_labels=pairs(labels),
    )


def render(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """(what to print, whether anything was rejected)."""
    store = MeshStore(validators=[validate_envoy_config])
    source = FileSource(args.source_dir, store, source_name=f"files:{args.source_dir}")
    source.load()
    model = store.build()
    translation = translate(model, _options(args))
    wanted = type_url_of(args.type) if args.type else None
    resources = {
        url.rpartition(".")[2]: {
            name: json_format.MessageToDict(message, preserving_proto_field_name=True)
            for name, message in sorted(named.items())
        }
        for url, named in translation.resources.items()
        if wanted is None or url == wanted
    }
    errors = [str(e) for e in (*model.errors, *translation.errors)]
    errors += [str(e) for e in source.errors]
    warnings = sorted({str(w) for w in (*model.warnings, *translation.warnings)})
    out = {
        "model_version": model.version,
        "errors": errors,
        "warnings": warnings,
        "resources": resources,
    }
    # Plain dicts and lists only (MessageToDict hands out OrderedDicts for Any).
    plain: dict[str, Any] = json.loads(json.dumps(out))
    return plain, bool(errors)


def run_translate(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)  # stderr: stdout carries only the resources
    out, rejected = render(args)
    if args.output == "json":
        sys.stdout.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(out, sort_keys=True))
    return 1 if rejected else 0
