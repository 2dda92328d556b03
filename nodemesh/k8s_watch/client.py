"""The HTTP layer: kubernetes-asyncio calls, mapped onto our error hierarchy.

Lists and watches ask the generated API methods for the raw response
(`_preload_content=False`) and decode JSON themselves: the model store wants
plain dicts, and skipping the client's model classes keeps a 50,000-endpoint
sync fast. Nothing above this module sees an aiohttp or ApiException type.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

from nodemesh.k8s_watch.errors import (
    ApiRejected,
    ApiUnavailable,
    ConfigError,
    K8sWatchError,
    MalformedResponse,
    ResourceGone,
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
) -> k8s.ApiClient:
    """An ApiClient for an explicit host (tests), the in-cluster service
    account (when KUBERNETES_SERVICE_HOST is set: the token and CA that
    Kubernetes mounts in `service_account_dir`, the token re-read as it
    rotates), or a kubeconfig."""
    cfg = k8s.Configuration()
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
    return k8s.ApiClient(configuration=cfg)


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


class KubeApi:
    """The few calls nodemesh makes, over one kubernetes-asyncio ApiClient."""

    def __init__(self, api_client: k8s.ApiClient, settings: WatchSettings) -> None:
        self._core = k8s.CoreV1Api(api_client)
        self._discovery = k8s.DiscoveryV1Api(api_client)
        self._custom = k8s.CustomObjectsApi(api_client)
        self._settings = settings

    async def _call(self, spec: ResourceSpec, **kw: Any) -> aiohttp.ClientResponse:
        kw["_preload_content"] = False
        if spec.field_selector:
            kw["field_selector"] = spec.field_selector
        if spec.group == "cilium.io":
            return await self._custom.list_cluster_custom_object(  # type: ignore[no-any-return]
                spec.group, spec.version, spec.plural, **kw
            )
        method = {
            "services": self._core.list_service_for_all_namespaces,
            "pods": self._core.list_pod_for_all_namespaces,
            "endpointslices": self._discovery.list_endpoint_slice_for_all_namespaces,
        }[spec.plural]
        return await method(**kw)  # type: ignore[no-any-return]

    async def list_page(self, spec: ResourceSpec, continue_token: str = "") -> ListPage:
        timeout = aiohttp.ClientTimeout(
            total=self._settings.list_timeout, sock_connect=self._settings.connect_timeout
        )
        kw: dict[str, Any] = {"limit": self._settings.list_page_size, "_request_timeout": timeout}
        if continue_token:
            kw["_continue"] = continue_token
        with translate_errors(f"list {spec}"):
            resp = await self._call(spec, **kw)
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
            resp = await self._call(
                spec,
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=s.watch_timeout_seconds,
                _request_timeout=timeout,
            )
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
        with translate_errors(f"create event in {namespace}"):
            await self._core.create_namespaced_event(namespace, dict(body))

    async def patch_status(
        self, spec: ResourceSpec, namespace: str, name: str, body: Mapping[str, Any]
    ) -> None:
        args = (spec.group, spec.version)
        kw: dict[str, Any] = {
            "_content_type": "application/merge-patch+json",
            "field_manager": self._settings.field_manager,
        }
        with translate_errors(f"patch status of {spec} {namespace}/{name}"):
            if spec.namespaced:
                await self._custom.patch_namespaced_custom_object_status(
                    *args, namespace, spec.plural, name, dict(body), **kw
                )
            else:
                await self._custom.patch_cluster_custom_object_status(
                    *args, spec.plural, name, dict(body), **kw
                )
