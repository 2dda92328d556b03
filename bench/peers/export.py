"""A snapshot's resources as JSON both peers load: {"version": ...,
"resources": {type URL: [protobuf JSON of an Any (with "@type")]}}.

nodemesh writes it from the translator's form (type URL -> name -> message);
go-control-plane's peer (bench/peers/gcp) reads it with protojson, and
nodemesh's own peer (bench/peers/nodemesh_peer.py) with json_format, so both
serve byte-for-byte the same resources."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from nodemesh.xds.translate.registry import unpack


def export(resources: Mapping[str, Mapping[str, Message]], version: str, path: Path) -> Path:
    doc: dict[str, Any] = {"version": version, "resources": {}}
    for type_url, by_name in resources.items():
        items = []
        for message in by_name.values():
            packed = any_pb2.Any()
            packed.Pack(message, deterministic=True)
            items.append(json_format.MessageToDict(packed))
        doc["resources"][type_url] = items
    path.write_text(json.dumps(doc))
    return path


def load(path: Path) -> tuple[str, dict[str, dict[str, Message]]]:
    """The version and resources (type URL -> name -> message) of an export."""
    doc = json.loads(path.read_text())
    resources: dict[str, dict[str, Message]] = {}
    for type_url, items in doc["resources"].items():
        by_name = resources.setdefault(type_url, {})
        for item in items:
            packed = json_format.ParseDict(item, any_pb2.Any())
            message = unpack(packed)
            name = getattr(message, "cluster_name", "") or getattr(message, "name", "")
            by_name[str(name)] = message
    return str(doc["version"]), resources
