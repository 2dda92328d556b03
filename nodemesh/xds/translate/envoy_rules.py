"""Checks Envoy makes in C++ when it loads a resource, beyond the protos'
protoc-gen-validate rules (constraints.py): each one here was seen NACKing
an update nodemesh had admitted (issue 10), and each message says what
Envoy's own error says (measured with `envoy --mode validate`, Envoy 1.40).

- Regexes (every `RegexMatcher`: safe_regex, regex_rewrite, header and RBAC
  matchers) must compile with RE2 and fit RE2's program size limit (Envoy's
  default error threshold is 100).
- Weighted clusters: every entry needs a weight, and the sum must fit 32 bits.
- A route configuration's domains are unique (case-insensitively, across its
  virtual hosts), with at most one "*".
- Durations are non-negative and at most 9,223,372,035 s.
- Header mutations (`request_headers_to_add` and the like) may not touch
  `host` or ":"-prefixed headers.
- A direct response body is at most `max_direct_response_body_size_bytes`
  (4096 by default).
"""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.type.matcher.v3 import regex_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from nodemesh.model.regex import re2_problem
from nodemesh.xds.translate.registry import unpack

MAX_DURATION_SECONDS = 9_223_372_035  # measured: 9223372036s is out of range
MAX_WEIGHT_SUM = 2**32 - 1
DEFAULT_MAX_BODY = 4096

_HEADER_LISTS_ADD = ("request_headers_to_add", "response_headers_to_add")
_HEADER_LISTS_REMOVE = ("request_headers_to_remove", "response_headers_to_remove")

Problem = tuple[str, str]  # (field path, reason)


def regex_problem(regex: str) -> str | None:
    """Why Envoy's RE2 refuses `regex` (syntax, or program size over Envoy's
    default limit); None when it compiles. One check for the whole mesh."""
    return re2_problem(regex)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _duration(value: duration_pb2.Duration, path: str) -> Iterator[Problem]:
    if value.seconds < 0 or value.nanos < 0:
        yield path, "invalid duration: expected a positive duration"
    elif value.seconds > MAX_DURATION_SECONDS or value.nanos > 999_999_999:
        yield path, f"duration out of range (at most {MAX_DURATION_SECONDS}s)"


def _weights(weighted: route_components_pb2.WeightedCluster, path: str) -> Iterator[Problem]:
    for index, entry in enumerate(weighted.clusters):
        if not entry.HasField("weight"):
            yield _join(path, f"clusters[{index}].weight"), "field 'weight' is missing"
    total = sum(entry.weight.value for entry in weighted.clusters)
    if total > MAX_WEIGHT_SUM:
        yield (
            _join(path, "clusters"),
            f"the sum of weights of all weighted clusters ({total}) exceeds {MAX_WEIGHT_SUM}",
        )


def _domains(config: route_pb2.RouteConfiguration, path: str) -> Iterator[Problem]:
    seen: set[str] = set()
    wildcard = False
    for v, host in enumerate(config.virtual_hosts):
        for d, domain in enumerate(host.domains):
            where = _join(path, f"virtual_hosts[{v}].domains[{d}]")
            if domain == "*":
                if wildcard:
                    yield where, "only a single wildcard domain is permitted"
                wildcard = True
                continue
            key = domain.lower()
            if key in seen:
                yield where, f"only unique values for domains are permitted: {domain!r} repeats"
            seen.add(key)


def _body(config: route_pb2.RouteConfiguration, path: str) -> Iterator[Problem]:
    limit = DEFAULT_MAX_BODY
    if config.HasField("max_direct_response_body_size_bytes"):
        limit = config.max_direct_response_body_size_bytes.value
    for v, host in enumerate(config.virtual_hosts):
        for r, route in enumerate(host.routes):
            body = route.direct_response.body
            size = len(body.inline_string.encode()) + len(body.inline_bytes)
            if size > limit:
                where = _join(path, f"virtual_hosts[{v}].routes[{r}].direct_response.body")
                yield where, f"response body size is {size} bytes; maximum is {limit}"


def _header_mutations(message: Message, path: str) -> Iterator[Problem]:
    for field in (*_HEADER_LISTS_ADD, *_HEADER_LISTS_REMOVE):
        if field not in message.DESCRIPTOR.fields_by_name:
            continue
        verb = "modified" if field in _HEADER_LISTS_ADD else "removed"
        for index, item in enumerate(getattr(message, field)):
            key = item.header.key if isinstance(item, base_pb2.HeaderValueOption) else item
            if isinstance(key, str) and (key.startswith(":") or key.lower() == "host"):
                yield (
                    _join(path, f"{field}[{index}]"),
                    f"{key!r}: ':'-prefixed or host headers may not be {verb}",
                )


def _specific(message: Message, path: str) -> Iterator[Problem]:
    if isinstance(message, regex_pb2.RegexMatcher):
        problem = regex_problem(message.regex)
        if problem is not None:
            yield _join(path, "regex"), problem
    elif isinstance(message, duration_pb2.Duration):
        yield from _duration(message, path)
    elif isinstance(message, route_components_pb2.WeightedCluster):
        yield from _weights(message, path)
    elif isinstance(message, route_pb2.RouteConfiguration):
        yield from _domains(message, path)
        yield from _body(message, path)
    if isinstance(
        message,
        route_pb2.RouteConfiguration
        | route_components_pb2.VirtualHost
        | route_components_pb2.Route
        | route_components_pb2.WeightedCluster.ClusterWeight,
    ):
        yield from _header_mutations(message, path)


def check_envoy_rules(message: Message, path: str = "") -> Iterator[Problem]:
    """(field path, reason) for everything in `message` (recursively, through
    Any fields) that Envoy's own loading code rejects."""
    if isinstance(message, any_pb2.Any):
        if message.type_url:
            yield from check_envoy_rules(unpack(message), path)
        return
    yield from _specific(message, path)
    for descriptor, value in message.ListFields():
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        name = _join(path, descriptor.name)
        if descriptor.is_repeated:
            entry = descriptor.message_type
            if entry is not None and entry.GetOptions().map_entry:
                items = [(f"{name}[{k!r}]", v) for k, v in value.items()]
            else:
                items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
            for item_path, item in items:
                if isinstance(item, Message):
                    yield from check_envoy_rules(item, item_path)
        else:
            yield from check_envoy_rules(value, name)
