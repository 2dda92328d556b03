"""The model's error hierarchy.

Sources catch `UnknownKindError` to log and skip objects the mesh does not
model; every other `ParseError` becomes an `ObjectError` in the snapshot.
"""

from __future__ import annotations

from nodemesh.model.objects import ObjectError, ObjectRef


class ModelError(Exception):
    """Base of every error the model raises."""


class ParseError(ModelError):
    """A source object that cannot be turned into a model object.

    `ref` is None only when not even the kind and name could be read; `field`
    is the dotted path of the offending field ("spec.ports[0].port").
    """

    def __init__(self, ref: ObjectRef | None, field: str, reason: str) -> None:
        self.ref = ref
        self.field = field
        self.reason = reason
        where = str(ref) if ref is not None else "object"
        super().__init__(f"{where}: {field}: {reason}")

    def to_object_error(self, kept_previous: bool = False) -> ObjectError:
        if self.ref is None:
            raise ModelError(f"cannot report an error without an object: {self}")
        return ObjectError(self.ref, self.field, self.reason, kept_previous)


class UnknownKindError(ParseError):
    """An apiVersion/kind the mesh does not model. Sources log and skip these."""

    def __init__(
        self, api_version: str, kind: str, namespace: str, name: str, expected: str = ""
    ) -> None:
        self.api_version = api_version
        self.kind = kind
        self.namespace = namespace
        self.name = name
        reason = f"{api_version} {kind} is not a kind nodemesh models".strip()
        if expected:
            # A known kind under an unexpected apiVersion: most likely a typo.
            reason = f"{reason} (it reads {kind} as {expected})"
        super().__init__(None, "kind", reason)


class PortAllocationError(ModelError):
    """More redirect listeners than the proxy port range holds."""
