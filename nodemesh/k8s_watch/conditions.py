"""What nodemesh says about each CiliumEnvoyConfig and CiliumNetworkPolicy.

Pure functions from a MeshModel (and the NACKs Envoys sent) to two status
conditions per object, as Gateway API does for its routes:

- Accepted: the object parsed, every Service it names exists, and it does not
  conflict with an older object. Reasons: Accepted, InvalidSpec,
  ServiceNotFound, Conflict.
- Programmed: its Envoy resources were translated and no node's Envoy rejected
  them. Reasons: Programmed, NotAccepted, EnvoyNACK (naming node and message).

The reporter (reporter.py) turns changes of these into status writes and Events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nodemesh.model.objects import Kind, ObjectError, ObjectRef
from nodemesh.model.snapshot import MeshModel

REPORTED_KINDS = (
    Kind.ENVOY_CONFIG,
    Kind.CLUSTERWIDE_ENVOY_CONFIG,
    Kind.NETWORK_POLICY,
    Kind.CLUSTERWIDE_NETWORK_POLICY,
)


@dataclass(frozen=True, slots=True)
class NackReport:
    """One rejection by one node's Envoy, as the xDS server recorded it."""

    node: str
    type_url: str
    resource_names: tuple[str, ...]
    message: str


class NackSource(Protocol):
    """The seam to the xDS server's status API (the wiring adapts it)."""

    def nacks(self) -> Iterable[NackReport]: ...


@dataclass(frozen=True, slots=True)
class Condition:
    type: str  # "Accepted" or "Programmed"
    status: str  # "True" or "False"
    reason: str
    message: str

    def same_as(self, existing: Mapping[str, Any]) -> bool:
        """Equal to a condition read back from the API (timestamps aside)."""
        return (
            existing.get("type") == self.type
            and existing.get("status") == self.status
            and existing.get("reason") == self.reason
            and existing.get("message") == self.message
        )


def error_reason(error: ObjectError) -> str:
    """Classify a model error. The model's messages are the contract here:
    admission says "does not exist"/"has no port" for a missing Service and
    "already redirected by" for a conflict; anything else is a bad spec."""
    text = error.reason
    if "does not exist" in text or "has no port" in text:
        return "ServiceNotFound"
    if "already redirected by" in text or "conflict" in text.lower():
        return "Conflict"
    return "InvalidSpec"


def _accepted(errors: list[ObjectError]) -> Condition:
    if not errors:
        return Condition("Accepted", "True", "Accepted", "Accepted by nodemesh")
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    kept = "; the previous version stays in effect" if any(e.kept_previous for e in errors) else ""
    message = f"{first.field}: {first.reason}{more}{kept}"
    return Condition("Accepted", "False", error_reason(first), message)


def _nacks_for(model: MeshModel, ref: ObjectRef, nacks: Iterable[NackReport]) -> list[NackReport]:
    """The NACKs that name a resource this object caused: one it defines (CEC
    names are qualified "<ns>/<name>/..."), or a redirect listener/route it
    owns. Envoy's message naming one counts too (SotW NACKs list every name)."""
    owned = {
        n for r in model.redirects if ref in r.owners for n in (r.listener, r.route_config) if n
    }
    prefix = ""
    if ref.kind in (Kind.ENVOY_CONFIG, Kind.CLUSTERWIDE_ENVOY_CONFIG):
        prefix = f"{ref.namespace}/{ref.name}/" if ref.namespace else f"{ref.name}/"
    out = []
    for nack in nacks:
        names = set(nack.resource_names)
        by_name = bool(prefix) and any(n.startswith(prefix) for n in names)
        by_message = bool(prefix) and prefix in nack.message
        if by_message or (not _names_other(nack, prefix, owned) and (by_name or names & owned)):
            out.append(nack)
    return out


def _names_other(nack: NackReport, prefix: str, owned: set[str]) -> bool:
    """True when Envoy's message names some resource, but not one of ours:
    then the NACK is about that other resource, whatever the response held."""
    mentioned = [n for n in nack.resource_names if n in nack.message]
    if not mentioned:
        return False
    return not any((prefix and n.startswith(prefix)) or n in owned for n in mentioned)


def nack_line(nack: NackReport) -> str:
    short = nack.type_url.rsplit(".", 1)[-1]
    message = " ".join(nack.message.split())  # one line, whatever Envoy sent
    return f"node {nack.node} rejected {short}: {message}"


def _programmed(accepted: Condition, nacks: list[NackReport]) -> Condition:
    if accepted.status != "True":
        return Condition("Programmed", "False", "NotAccepted", "Not accepted: nothing programmed")
    if nacks:
        # One line per node and type: agents merge their own lines with other
        # nodes' (see reporter), so the format is part of the contract.
        parts = [nack_line(n) for n in nacks]
        return Condition("Programmed", "False", "EnvoyNACK", "\n".join(sorted(set(parts))))
    # No model version in the message: it would rewrite status on every model change.
    return Condition("Programmed", "True", "Programmed", "Translated into Envoy configuration")


def reported_refs(model: MeshModel, errors: Iterable[ObjectError] = ()) -> set[ObjectRef]:
    """Every CEC/CNP the model knows, accepted or not."""
    refs = {c.ref for c in model.envoy_configs} | {p.ref for p in model.network_policies}
    refs |= {e.ref for e in (*model.errors, *errors) if e.ref.kind in REPORTED_KINDS}
    return refs


def conditions_for(
    model: MeshModel,
    nacks: Iterable[NackReport] = (),
    translation_errors: Iterable[ObjectError] = (),
) -> dict[ObjectRef, tuple[Condition, Condition]]:
    """`translation_errors` are what the xDS translator rejected beyond the
    model's own errors (it sees the Envoy resources; the model does not)."""
    extra = tuple(translation_errors)
    errors: dict[ObjectRef, list[ObjectError]] = {}
    for error in dict.fromkeys((*model.errors, *extra)):
        errors.setdefault(error.ref, []).append(error)
    all_nacks = list(nacks)
    out = {}
    for ref in reported_refs(model, extra):
        accepted = _accepted(errors.get(ref, []))
        out[ref] = (
            accepted,
            _programmed(accepted, _nacks_for(model, ref, all_nacks)),
        )
    return out
