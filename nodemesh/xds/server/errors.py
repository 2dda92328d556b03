"""Errors of the ADS/CSDS server and the one place that maps them to gRPC.

Streams raise `XdsServerError` subclasses for every input they refuse;
`grpc_status_for` turns those into a status code and a message naming the
offending field. Anything else is a bug in this package and becomes
INTERNAL with no detail leaked to the client (the traceback goes to the log).
"""

from __future__ import annotations

import grpc


class XdsServerError(Exception):
    """Base of every error the xDS server raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequest(XdsServerError):
    """A request breaks the protocol (missing node, malformed type URL...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class TooManyNames(XdsServerError):
    """A stream subscribed to more resource names than the configured bound."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooManyTypes(XdsServerError):
    """A stream asked for more type URLs this server does not serve than the
    configured bound."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ClientTooSlow(XdsServerError):
    """A client did not read a response within the send timeout; the stream
    is closed instead of buffering without bound."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ServerConfigError(XdsServerError):
    """The server cannot start as configured (bad TLS files, bad address)."""


def grpc_status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status and message a client sees for `exc`."""
    if isinstance(exc, XdsServerError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error in the xDS server"
