"""ADS (SotW and delta) and CSDS server over the snapshot cache."""

from nodemesh.xds.server.callbacks import (
    RequestInfo,
    RequestKind,
    ResponseInfo,
    StreamInfo,
    XdsCallbacks,
)
from nodemesh.xds.server.errors import (
    ClientTooSlow,
    InvalidRequest,
    ServerConfigError,
    TooManyNames,
    TooManyTypes,
    XdsServerError,
)
from nodemesh.xds.server.server import AdsServer, ServerSettings
from nodemesh.xds.server.status import (
    ClientResourceStatus,
    ClientStatus,
    ConfigStatus,
    ResourceStatus,
    TypeStatus,
)
from nodemesh.xds.server.stream import StreamSettings
from nodemesh.xds.server.tls import TlsSettings

__all__ = [
    "AdsServer",
    "ClientResourceStatus",
    "ClientStatus",
    "ClientTooSlow",
    "ConfigStatus",
    "InvalidRequest",
    "RequestInfo",
    "RequestKind",
    "ResourceStatus",
    "ResponseInfo",
    "ServerConfigError",
    "ServerSettings",
    "StreamInfo",
    "StreamSettings",
    "TlsSettings",
    "TooManyNames",
    "TooManyTypes",
    "TypeStatus",
    "XdsCallbacks",
    "XdsServerError",
]
