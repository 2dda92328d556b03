"""The HTTP layer: kubernetes-asyncio calls, mapped onto our error hierarchy.

Every request goes through the client's own `ApiClient.call_api` (auth
headers, token refresh, TLS, timeouts), but with the REST paths written here
rather than through the generated `*Api` classes: nodemesh makes five kinds
of request, and importing the generated classes costs about 35 MiB of RSS
(see `kube_core`). Responses are taken raw and decoded here: the model store
wants plain dicts, and skipping the client's model classes keeps a
50,000-endpoint sync fast. Nothing above this module sees an aiohttp or
ApiException type.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import orjson

from nodemesh.k8s_watch.errors import (
    ApiRejected,
    ApiUnavailable,
    ConfigError,
    K8sWatchError,
    MalformedResponse,
    ResourceGone,
)
from nodemesh.k8s_watch.kube_core import (
    ApiClient,
    ApiException,
    ConfigException,
    Configuration,
    load_incluster_config,
    load_kube_config,
)
from nodemesh.k8s_watch.resources import ResourceSpec
from nodemesh.k8s_watch.settings import WatchSettings

Raw = dict[str, Any]
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


async def make_api_client(
    host: str | None = None,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    token: str | None = None,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> ApiClient:
    """An ApiClient for an explicit host (tests), the in-cluster service
    account (when KUBERNETES_SERVICE_HOST is set: the token and CA that
    Kubernetes mounts in `service_account_dir`, the token re-read as it
    rotates), or a kubeconfig."""
    cfg = Configuration()
    try:
        if host:
            cfg.host = host
            if token:
                cfg.api_key = {"BearerToken": f"Bearer {token}"}
        elif "KUBERNETES_SERVICE_HOST" in os.environ and not kubeconfig:
            load_incluster_config(
                client_configuration=cfg,
                token_filename=os.path.join(service_account_dir, "token"),
                cert_filename=os.path.join(service_account_dir, "ca.crt"),
            )
        else:
            if kubeconfig and not os.path.exists(kubeconfig):
                raise ConfigError(f"kubeconfig {kubeconfig} does not exist")
            await load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
    except (ConfigException, OSError) as exc:
        raise ConfigError(f"no usable Kubernetes credentials: {exc}") from exc
    return ApiClient(configuration=cfg)


@dataclass(frozen=True, slots=True)
class ListPage:
    items: list[Raw]
    resource_version: str
    continue_token: str


def _status_error(code: int, body: bytes) -> K8sWatchError:
    message = body[:500].decode(errors="replace")
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(body).get("message", message)
    if code == 410:
        return ResourceGone(message)
    if code == 429 or code >= 500:
        return ApiUnavailable(f"HTTP {code}: {message}")
    return ApiRejected(code, message)


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Map the HTTP client's exceptions onto ours, naming the request."""
    try:
        yield
    except ApiException as exc:
        body = exc.body if isinstance(exc.body, bytes) else str(exc.body or exc.reason).encode()
        raise _status_error(int(exc.status or 0), body) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ApiUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


def _collection_path(spec: ResourceSpec) -> str:
    """Every object of `spec`, across namespaces."""
    prefix = f"/apis/{spec.group}/{spec.version}" if spec.group else f"/api/{spec.version}"
    return f"{prefix}/{spec.plural}"


class KubeApi:
    """The few calls nodemesh makes, over one kubernetes-asyncio ApiClient:
    given (tests), or made by `connect` in `open()` and closed by `close()`
    (a process, which must create it inside its event loop)."""

    def __init__(
        self,
        api_client: ApiClient | None,
        settings: WatchSettings,
        connect: Callable[[], Awaitable[ApiClient]] | None = None,
    ) -> None:
        if api_client is None and connect is None:
            raise ValueError("KubeApi needs an api_client or a connect function")
        self._given = api_client
        self._connect = connect
        self._owned: ApiClient | None = None
        self._settings = settings

    @property
    def _client(self) -> ApiClient:
        client = self._given or self._owned
        if client is None:
            raise RuntimeError("KubeApi used before open()")
        return client

    async def open(self) -> None:
        """Create the client if this object makes its own (idempotent)."""
        if self._given is None and self._owned is None and self._connect is not None:
            self._owned = await self._connect()

    async def close(self) -> None:
        """Close the client this object made; a given client is its owner's."""
        if self._owned is not None:
            await self._owned.close()
            self._owned = None

    async def _request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, Any]],
        *,
        path_params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        content_type: str = "",
        raw: bool = False,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        """One request through the client's own machinery (auth, TLS, path
        quoting). `raw` returns the open aiohttp response, whatever its
        status; otherwise a non-2xx status raises ApiException and nothing is
        deserialized (no response type is named)."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        return await self._client.call_api(
            path,
            method,
            path_params=dict(path_params or {}),
            query_params=query,
            header_params=headers,
            body=dict(body) if body is not None else None,
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=not raw,
            _request_timeout=timeout,
        )

    async def _call(
        self, spec: ResourceSpec, query: list[tuple[str, Any]], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        if spec.field_selector:
            query.append(("fieldSelector", spec.field_selector))
        resp = await self._request("GET", _collection_path(spec), query, raw=True, timeout=timeout)
        return cast(aiohttp.ClientResponse, resp)

    async def list_page(self, spec: ResourceSpec, continue_token: str = "") -> ListPage:
        timeout = aiohttp.ClientTimeout(
            total=self._settings.list_timeout, sock_connect=self._settings.connect_timeout
        )
        query: list[tuple[str, Any]] = [("limit", self._settings.list_page_size)]
        if continue_token:
            query.append(("continue", continue_token))
        with translate_errors(f"list {spec}"):
            resp = await self._call(spec, query, timeout)
            async with resp:
                body = await resp.read()
                if resp.status != 200:
                    raise _status_error(resp.status, body)
        try:
            doc = orjson.loads(body)
            meta = doc.get("metadata") or {}
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise TypeError("items is not a list")
            return ListPage(items, str(meta["resourceVersion"]), meta.get("continue") or "")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise MalformedResponse(f"list {spec}: {exc}") from exc

    async def watch(self, spec: ResourceSpec, resource_version: str) -> AsyncGenerator[bytes, None]:
        """One watch request from `resource_version`: yields b"" once the
        server accepted it, then each raw (non-empty) event line."""
        s = self._settings
        timeout = aiohttp.ClientTimeout(
            sock_connect=s.connect_timeout, sock_read=s.watch_timeout_seconds + s.read_timeout_grace
        )
        with translate_errors(f"watch {spec}"):
            query: list[tuple[str, Any]] = [
                ("watch", True),
                ("resourceVersion", resource_version),
                ("allowWatchBookmarks", True),
                ("timeoutSeconds", s.watch_timeout_seconds),
            ]
            resp = await self._call(spec, query, timeout)
            async with resp:
                if resp.status != 200:
                    raise _status_error(resp.status, await resp.read())
                yield b""  # accepted: tells the caller the server is reachable
                buffer = b""
                # Split by hand: StreamReader.readline() caps line length, and
                # one large object (an EndpointSlice of 1,000 endpoints) may exceed it.
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield line
                if buffer.strip():
                    yield buffer

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        """POST an `events.k8s.io/v1` Event (the reporter builds that version's body)."""
        with translate_errors(f"create event in {namespace}"):
            await self._request(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/{namespace}/events",
                [],
                path_params={"namespace": namespace},
                body=body,
            )

    async def patch_status(
        self, spec: ResourceSpec, namespace: str, name: str, body: Mapping[str, Any]
    ) -> None:
        prefix = f"/apis/{spec.group}/{spec.version}"
        params = {"plural": spec.plural, "name": name}
        if spec.namespaced:
            path = prefix + "/namespaces/{namespace}/{plural}/{name}/status"
            params["namespace"] = namespace
        else:
            path = prefix + "/{plural}/{name}/status"
        with translate_errors(f"patch status of {spec} {namespace}/{name}"):
            await self._request(
                "PATCH",
                path,
                [("fieldManager", self._settings.field_manager)],
                path_params=params,
                body=body,
                content_type="application/merge-patch+json",
            )
