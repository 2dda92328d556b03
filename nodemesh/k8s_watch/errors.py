"""The k8s_watch error hierarchy, over aiohttp's and kubernetes-asyncio's.

Callers catch these, never the HTTP client's own exceptions: the informer
loop decides from the class alone whether to back off and retry the same
watch (`ApiUnavailable`), relist (`ResourceGone`) or report a refusal
(`ApiRejected`).
"""

from __future__ import annotations


class K8sWatchError(Exception):
    """Base of every error this package raises."""


class ConfigError(K8sWatchError):
    """No usable API server address or credentials (kubeconfig, in-cluster)."""


class ApiUnavailable(K8sWatchError):
    """The API server could not be reached, cut the connection, or answered 5xx/429.

    Transient by nature: retry the same request after a backoff.
    """


class ResourceGone(K8sWatchError):
    """410 Gone: the resourceVersion we asked for was compacted. Relist."""


class ApiRejected(K8sWatchError):
    """The API server refused the request (4xx other than 410/429)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"HTTP {code}: {message}")
        self.code = code


class MalformedResponse(K8sWatchError):
    """The API server's answer could not be understood (not JSON, wrong shape)."""
