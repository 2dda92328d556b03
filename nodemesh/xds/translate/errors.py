"""Errors of the Envoy translation.

Most bad input never raises: it becomes an ObjectError in the Translation (or
in validate_envoy_config's answer) naming the object, the field and the
reason. These exceptions carry such a finding between the helpers that detect
it and the place that turns it into an ObjectError.
"""

from __future__ import annotations


class TranslateError(Exception):
    """Base of every error the translator raises."""


class ResourceError(TranslateError):
    """One field of one user resource is unacceptable.

    `field` is the dotted path inside the resource ("virtual_hosts[0].routes[1]"),
    relative to where the resource sits in its object, or "" for the whole
    resource.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class UnknownTypeError(ResourceError):
    """An "@type" (a resource's or an embedded Any's) that nodemesh cannot parse."""
