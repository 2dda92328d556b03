"""The field constraints Envoy enforces on every resource it receives
(protoc-gen-validate rules in the protos Envoy was built from), checked before
a resource ever reaches Envoy.

Envoy NACKs a resource that breaks one, and a NACK of a state-of-the-world
update holds back the whole update; checking here turns it into an error
that names the CEC and the field. This covers the rules Envoy's protos use
(required messages and oneofs, string lengths and bytes, patterns (RE2),
well-known header name/value formats, prefixes, `in` lists, numeric bounds,
repeated and map sizes, defined enums, durations); the well-known formats
Envoy's protos hardly use (email, hostname, ip, uri, uuid) are left to Envoy.
What Envoy checks in C++ beyond these rules is in envoy_rules.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import re2  # type: ignore[import-untyped]
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from validate import validate_pb2

from nodemesh.xds.translate.registry import unpack

_NUMERIC = frozenset(
    {
        *("float", "double", "int32", "int64", "uint32", "uint64"),
        *("sint32", "sint64", "fixed32", "fixed64", "sfixed32", "sfixed64"),
    }
)
_BOUNDS = (("gt", "more than"), ("gte", "at least"), ("lt", "less than"), ("lte", "at most"))
_WRAPPERS = "google.protobuf."
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
# protoc-gen-validate's well-known regexes (validate.proto), strict and not.
_LOOSE_HEADER = r"^[^\x00\n\r]*$"
_WELL_KNOWN = {
    (validate_pb2.HTTP_HEADER_NAME, True): r"^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$",
    (validate_pb2.HTTP_HEADER_VALUE, True): r"^[^\x00-\x08\x0A-\x1F\x7F]*$",
    (validate_pb2.HTTP_HEADER_NAME, False): _LOOSE_HEADER,
    (validate_pb2.HTTP_HEADER_VALUE, False): _LOOSE_HEADER,
}
_PATTERNS: dict[str, Any] = {}


def _matches(pattern: str, value: str) -> bool:
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        compiled = _PATTERNS[pattern] = re2.compile(pattern, _RE2_OPTIONS)
    return compiled.search(value) is not None


_RULES: dict[FieldDescriptor, Any] = {}


def _rules(field: FieldDescriptor) -> Any:
    # Reading options costs more than the check itself; a CEC with 100,000
    # weighted clusters asks for the same few descriptors' rules each time.
    try:
        return _RULES[field]
    except KeyError:
        pass
    options = field.GetOptions()
    has = options.HasExtension(validate_pb2.rules)
    found = options.Extensions[validate_pb2.rules] if has else None
    _RULES[field] = found
    return found


_PLANS: dict[FieldDescriptor, dict[str, Any]] = {}


def _plan(field: FieldDescriptor, rules: Any) -> dict[str, Any]:
    """The string rules a field sets, read once per field."""
    plan = _PLANS.get(field)
    if plan is None:
        plan = {name.name: value for name, value in rules.ListFields()}
        _PLANS[field] = plan
    return plan


def _string(field: FieldDescriptor, rules: Any, value: str) -> Iterator[str]:
    plan = _plan(field, rules)
    if not plan:
        return
    if len(value) < plan.get("min_len", 0):
        yield f"must have at least {plan['min_len']} characters"
    if "max_len" in plan and len(value) > plan["max_len"]:
        yield f"must have at most {plan['max_len']} characters"
    if "min_bytes" in plan or "max_bytes" in plan:
        size = len(value.encode())
        if size < plan.get("min_bytes", 0):
            yield f"must have at least {plan['min_bytes']} bytes"
        if "max_bytes" in plan and size > plan["max_bytes"]:
            yield f"must have at most {plan['max_bytes']} bytes"
    if "prefix" in plan and not value.startswith(plan["prefix"]):
        yield f"must start with {plan['prefix']!r}"
    if "suffix" in plan and not value.endswith(plan["suffix"]):
        yield f"must end with {plan['suffix']!r}"
    if "contains" in plan and plan["contains"] not in value:
        yield f"must contain {plan['contains']!r}"
    if "not_contains" in plan and plan["not_contains"] in value:
        yield f"must not contain {plan['not_contains']!r}"
    if plan.keys() & {"const", "in", "not_in"}:
        yield from _listed(rules, value)
    pattern = plan.get("pattern")
    if "well_known_regex" in plan:
        strict = plan.get("strict", True)
        pattern = _WELL_KNOWN.get((plan["well_known_regex"], strict), pattern)
    if pattern and not (plan.get("ignore_empty") and not value) and not _matches(pattern, value):
        yield f"{value!r} does not match regex pattern {pattern!r}"


def _listed(rules: Any, value: Any) -> Iterator[str]:
    """`const`, `in` and `not_in`, which strings, numbers and enums share."""
    if rules.HasField("const") and value != rules.const:
        yield f"must be {rules.const!r}"
    allowed = getattr(rules, "in")  # a Python keyword
    if allowed and value not in allowed:
        yield f"{value!r} is not one of {list(allowed)}"
    if rules.not_in and value in rules.not_in:
        yield f"{value!r} must not be one of {list(rules.not_in)}"


def _bounds(rules: Any, value: float) -> Iterator[str]:
    yield from _listed(rules, value)
    for bound, words in _BOUNDS:
        if rules.HasField(bound):
            limit = getattr(rules, bound)
            ok = {
                "gt": value > limit,
                "gte": value >= limit,
                "lt": value < limit,
                "lte": value <= limit,
            }[bound]
            if not ok:
                yield f"must be {words} {limit} (is {value})"


def _scalar(rules: Any, field: FieldDescriptor, value: Any) -> Iterator[str]:
    kind = rules.WhichOneof("type")
    if kind is None:
        return
    specific: Any = getattr(rules, kind)
    if kind in _NUMERIC:
        yield from _bounds(specific, value)
    elif kind == "string":
        yield from _string(field, specific, value)
    elif kind == "enum":
        yield from _listed(specific, value)
        enum = field.enum_type
        if specific.defined_only and enum is not None and value not in enum.values_by_number:
            yield f"{value} is not a defined {enum.name} value"


def _message(rules: Any, value: Message | None) -> Iterator[str]:
    """Rules on a singular message field; `value` is None when it is unset."""
    kind = rules.WhichOneof("type")
    if value is None:
        required = rules.message.required or (
            kind in ("any", "duration", "timestamp") and getattr(rules, kind).required
        )
        if required:
            yield "is required"
        return
    if kind == "duration" and isinstance(value, duration_pb2.Duration):
        yield from _bounds_duration(rules.duration, value)
    elif kind in _NUMERIC and value.DESCRIPTOR.full_name.startswith(_WRAPPERS):
        yield from _bounds(getattr(rules, kind), getattr(value, "value"))  # noqa: B009


def _bounds_duration(rules: Any, value: duration_pb2.Duration) -> Iterator[str]:
    nanos = value.ToNanoseconds()
    for bound, words in _BOUNDS:
        if rules.HasField(bound):
            limit = getattr(rules, bound).ToNanoseconds()
            ok = {"gt": nanos > limit, "gte": nanos >= limit, "lt": nanos < limit}.get(
                bound, nanos <= limit
            )
            if not ok:
                yield f"must be {words} {limit / 1e9:g}s"


def _container(rules: Any, size: int) -> Iterator[str]:
    kind = rules.WhichOneof("type")
    if kind == "repeated":
        if rules.repeated.HasField("min_items") and size < rules.repeated.min_items:
            yield f"needs at least {rules.repeated.min_items} item(s)"
        if rules.repeated.HasField("max_items") and size > rules.repeated.max_items:
            yield f"takes at most {rules.repeated.max_items} item(s)"
    elif kind == "map" and rules.map.HasField("min_pairs") and size < rules.map.min_pairs:
        yield f"needs at least {rules.map.min_pairs} entries"


def _field(message: Message, field: FieldDescriptor, path: str) -> Iterator[tuple[str, str]]:
    rules = _rules(field)
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    if field.is_repeated:
        values = getattr(message, field.name)
        if rules is not None:
            yield from ((path, reason) for reason in _container(rules, len(values)))
        entry = field.message_type
        is_map = is_message and entry is not None and entry.GetOptions().map_entry
        if is_map:
            items = [(f"{path}[{k!r}]", values[k]) for k in values]
        else:
            items = [(f"{path}[{i}]", item) for i, item in enumerate(values)]
        item_rules = rules.repeated.items if rules is not None and not is_map else None
        for item_path, item in items:
            if isinstance(item, Message):
                yield from check_constraints(item, item_path)
            elif item_rules is not None:
                yield from ((item_path, r) for r in _scalar(item_rules, field, item))
        return
    if is_message:
        present = message.HasField(field.name)
        value = getattr(message, field.name) if present else None
        # A oneof member's rules apply only when it is the member chosen.
        if rules is not None and (present or field.containing_oneof is None):
            yield from ((path, reason) for reason in _message(rules, value))
        if value is not None:
            yield from check_constraints(value, path)
    elif rules is not None and (field.has_presence is False or message.HasField(field.name)):
        yield from ((path, r) for r in _scalar(rules, field, getattr(message, field.name)))


def check_constraints(message: Message, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, reason) for every constraint `message` breaks, recursively
    (through Any fields too)."""
    if isinstance(message, any_pb2.Any):
        if message.type_url:
            yield from check_constraints(unpack(message), path)
        return
    descriptor = message.DESCRIPTOR
    for oneof in descriptor.oneofs:
        options = oneof.GetOptions()
        required = (
            options.HasExtension(validate_pb2.required)
            and options.Extensions[validate_pb2.required]
        )
        if required and message.WhichOneof(oneof.name) is None:
            choices = ", ".join(f.name for f in oneof.fields)
            yield (f"{path}" if path else oneof.name, f"needs one of: {choices}")
    fields: Any = descriptor.fields  # upb and pure-Python descriptor types differ
    for field in fields:
        yield from _field(message, field, f"{path}.{field.name}" if path else field.name)
