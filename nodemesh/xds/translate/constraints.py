"""The field constraints Envoy enforces on every resource it receives
(protoc-gen-validate rules in the protos Envoy was built from), checked before
a resource ever reaches Envoy.

Envoy NACKs a resource that breaks one, and a NACK of a state-of-the-world
update holds back the whole update; checking here turns it into an error
that names the CEC and the field. This covers the rules Envoy's protos use
most (required messages and oneofs, string lengths, numeric bounds,
repeated and map sizes, defined enums, durations); rules it does not cover
(regex patterns, well-known string formats, `in` lists) are left to Envoy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


_RULES: dict[str, Any] = {}


def _rules(field: FieldDescriptor) -> Any:
    """The field's validate rules (None: none); read once per field."""
    key = field.full_name
    if key in _RULES:
        return _RULES[key]
    options = field.GetOptions()
    found = (
        options.Extensions[validate_pb2.rules] if options.HasExtension(validate_pb2.rules) else None
    )
    _RULES[key] = found
    return found


def _bounds(rules: Any, value: float) -> Iterator[str]:
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
        if specific.HasField("min_len") and len(value) < specific.min_len:
            yield f"must have at least {specific.min_len} characters"
        if specific.HasField("max_len") and len(value) > specific.max_len:
            yield f"must have at most {specific.max_len} characters"
        if specific.HasField("min_bytes") and len(value.encode()) < specific.min_bytes:
            yield f"must have at least {specific.min_bytes} bytes"
    elif kind == "enum" and specific.defined_only:
        enum = field.enum_type
        if enum is not None and value not in enum.values_by_number:
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
    for oneof in _required_oneofs(descriptor):
        if message.WhichOneof(oneof.name) is None:
            choices = ", ".join(f.name for f in oneof.fields)
            yield (f"{path}" if path else oneof.name, f"needs one of: {choices}")
    for field in _checked_fields(descriptor):
        # An unset, rule-free message field: nothing below it can break a rule.
        skip = field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated
        if skip and _rules(field) is None and not message.HasField(field.name):
            continue
        yield from _field(message, field, f"{path}.{field.name}" if path else field.name)


_CHECKED: dict[str, tuple[FieldDescriptor, ...]] = {}
_ONEOFS: dict[str, tuple[Any, ...]] = {}


def _required_oneofs(descriptor: Any) -> tuple[Any, ...]:
    known = _ONEOFS.get(descriptor.full_name)
    if known is None:
        known = tuple(
            o
            for o in descriptor.oneofs
            if o.GetOptions().HasExtension(validate_pb2.required)
            and o.GetOptions().Extensions[validate_pb2.required]
        )
        _ONEOFS[descriptor.full_name] = known
    return known


def _checked_fields(descriptor: Any) -> tuple[FieldDescriptor, ...]:
    """The fields of a message type that can break a rule: those with rules,
    and message-typed ones (rules may sit below them). Computed once per type:
    the walk runs over every generated resource (GAMMA routes by the thousand)."""
    known = _CHECKED.get(descriptor.full_name)
    if known is None:
        fields: Any = descriptor.fields  # upb and pure-Python descriptor types differ
        known = tuple(
            f for f in fields if f.type == FieldDescriptor.TYPE_MESSAGE or _rules(f) is not None
        )
        _CHECKED[descriptor.full_name] = known
    return known
