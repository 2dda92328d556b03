"""Admission of CiliumEnvoyConfigs, with Cilium's semantics.

A CEC is admitted when every validator accepts it, every Service it names in
`spec.services` / `spec.backendServices` exists (with the ports it lists),
and no older CEC already redirects one of its service ports. Older means
earlier creationTimestamp, then namespace/name; the loser's error names the
winner. A CEC without a creationTimestamp (written by hand into a file) is
as old as its first admission: an incumbent one predates every newcomer, and
a newcomer one is younger than everything admitted, so adding a CEC never
displaces a working one. A rejected CEC whose earlier version was admitted
keeps that version in effect (unless that version itself now conflicts).

Admission runs on every build that touches Services or CECs, so a CEC that
was rejected for a missing Service is admitted once the Service appears.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from nodemesh.model.objects import (
    EnvoyConfig,
    ObjectError,
    ObjectRef,
    RedirectedService,
    Service,
    ServiceName,
)

Validate = Callable[[EnvoyConfig], Sequence[ObjectError]]

_Claims = dict[tuple[ServiceName, int], ObjectRef]


@dataclass(frozen=True, slots=True)
class Admission:
    configs: tuple[EnvoyConfig, ...]  # admitted, oldest first
    errors: tuple[ObjectError, ...]


@dataclass(frozen=True, slots=True)
class Contender:
    """One CEC: its latest parsed version (None if that failed to parse) and the
    version admitted before (None if never)."""

    candidate: EnvoyConfig | None
    previous: EnvoyConfig | None

    @property
    def current(self) -> EnvoyConfig:
        found = self.candidate or self.previous
        assert found is not None
        return found


# Sorts after every RFC 3339 timestamp: a newcomer without one is the youngest.
_NEWEST = "~"


def age_key(config: EnvoyConfig, incumbent: bool = True) -> tuple[str, int, str, str]:
    """Older first. Without a timestamp, an incumbent (a version of it is
    admitted now) counts as oldest and a newcomer as newest; equal ages go to
    the incumbent, then to namespace/name."""
    stamp = config.creation_timestamp or ("" if incumbent else _NEWEST)
    return (stamp, 0 if incumbent else 1, config.ref.namespace, config.ref.name)


def admit(
    contenders: Mapping[ObjectRef, Contender],
    services: Mapping[ServiceName, Service],
    validate: Validate,
) -> Admission:
    claims: _Claims = {}
    admitted: list[EnvoyConfig] = []
    errors: list[ObjectError] = []

    def order(ref: ObjectRef) -> tuple[str, int, str, str]:
        entry = contenders[ref]
        return age_key(entry.current, incumbent=entry.previous is not None)

    for ref in sorted(contenders, key=order):
        entry = contenders[ref]
        problems: list[ObjectError] = []
        if entry.candidate is not None:
            problems = _check(entry.candidate, services, claims, validate)
            if not problems:
                admitted.append(entry.candidate)
                continue
        kept = entry.previous
        if kept is not None and _names_missing(kept, services):
            # Deleted is deleted: a Service the kept version itself names is
            # gone, and nothing is redirected to a Service that does not exist,
            # so no version of this CEC is in effect (docs/semantics.md).
            kept = None
        conflicts = [] if kept is None else _conflicts(kept, services, claims)
        if conflicts:
            # The earlier version now loses to an older CEC: nothing of it stays.
            errors.extend(c for c in conflicts if c not in problems)
            kept = None
        if kept is not None:
            _claim(kept, services, claims)
            admitted.append(kept)
        errors.extend(replace(p, kept_previous=kept is not None) for p in problems)
    return Admission(tuple(admitted), tuple(errors))


def _check(
    config: EnvoyConfig,
    services: Mapping[ServiceName, Service],
    claims: _Claims,
    validate: Validate,
) -> list[ObjectError]:
    problems = list(validate(config))
    for field, entries in (
        ("spec.services", config.services),
        ("spec.backendServices", config.backend_services),
    ):
        for index, entry in enumerate(entries):
            problems.extend(_missing(config.ref, f"{field}[{index}]", entry, services))
    if not problems:
        problems = _conflicts(config, services, claims)
        if not problems:
            _claim(config, services, claims)
    return problems


def _names_missing(config: EnvoyConfig, services: Mapping[ServiceName, Service]) -> bool:
    return any(
        _missing(config.ref, "", entry, services)
        for entry in (*config.services, *config.backend_services)
    )


def _missing(
    ref: ObjectRef, field: str, entry: RedirectedService, services: Mapping[ServiceName, Service]
) -> list[ObjectError]:
    service = services.get(entry.service)
    if service is None:
        reason = f"Service {entry.service} does not exist; nothing is redirected until it does"
        return [ObjectError(ref, f"{field}.name", reason)]
    have = {p.port for p in service.ports}
    return [
        ObjectError(ref, f"{field}.ports[{i}]", f"Service {entry.service} has no port {port}")
        for i, port in enumerate(entry.ports)
        if port not in have
    ]


def _redirected_ports(
    config: EnvoyConfig, services: Mapping[ServiceName, Service]
) -> list[tuple[int, ServiceName, int]]:
    out = []
    for index, entry in enumerate(config.services):
        service = services.get(entry.service)
        if service is None:
            continue
        for port in service.ports:
            if port.protocol == "TCP" and (not entry.ports or port.port in entry.ports):
                out.append((index, entry.service, port.port))
    return out


def _conflicts(
    config: EnvoyConfig, services: Mapping[ServiceName, Service], claims: _Claims
) -> list[ObjectError]:
    out = []
    for index, service, port in _redirected_ports(config, services):
        owner = claims.get((service, port))
        if owner is not None and owner != config.ref:
            reason = f"port {port} of Service {service} is already redirected by {owner}"
            reason += " (older, or admitted first when neither has a creationTimestamp)"
            out.append(ObjectError(config.ref, f"spec.services[{index}]", reason))
    return out


def _claim(config: EnvoyConfig, services: Mapping[ServiceName, Service], claims: _Claims) -> None:
    for _, service, port in _redirected_ports(config, services):
        claims.setdefault((service, port), config.ref)
