"""A Kubernetes API server double speaking the real REST list/watch protocol.

What it serves, as kube-apiserver does:
- discovery: /api, /apis, /api/v1, /apis/{group}/{version}, /version;
- GET lists (all namespaces or one) with resourceVersion, limit/continue,
  fieldSelector (metadata.name, metadata.namespace, spec.nodeName) and
  equality-based labelSelector;
- GET ?watch=1: a chunked stream of one JSON event per line (ADDED, MODIFIED,
  DELETED, BOOKMARK with allowWatchBookmarks, ERROR with a 410 Status when the
  requested resourceVersion was compacted away), honouring timeoutSeconds;
- GET/POST/PUT/DELETE of single objects, PUT and merge-PATCH of /status;
- generation bumps on spec changes only, never on status writes.

Fault hooks for tests: `drop_watches()`, `compact()`, `stop()`/`start()` (or
`outage(seconds)`) and `store.inject_raw()` for garbage on the watch stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .store import (
    RESOURCE_TYPES,
    Change,
    Gone,
    Obj,
    ObjectStore,
    ResourceType,
    StoreError,
    Subscriber,
    encode,
    find_type,
)

_PATH = re.compile(
    r"^/(?:api/(?P<cv>v1)|apis/(?P<g>[^/]+)/(?P<v>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status))?$"
)


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _error(exc: StoreError) -> web.Response:
    return web.json_response(_status(exc.code, exc.reason, exc.message), status=exc.code)


def _flag(value: str | None) -> bool:
    """Query booleans as Go's strconv.ParseBool reads them (clients send "True")."""
    return (value or "") in ("1", "t", "T", "true", "TRUE", "True")


def _rv(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise StoreError(400, "BadRequest", f"invalid resource version: {text!r}") from None


def _field_value(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def _selector_matches(obj: Obj, field_sel: str, label_sel: str) -> bool:
    for term in filter(None, field_sel.split(",")):
        neg = "!=" in term
        key, _, want = term.partition("!=" if neg else "=")
        if (_field_value(obj, key) == want.lstrip("=")) == neg:
            return False
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, label_sel.split(",")):
        if "!=" in term:
            key, _, want = term.partition("!=")
            if labels.get(key) == want:
                return False
        elif "=" in term:
            key, _, want = term.partition("=")
            if labels.get(key) != want.lstrip("="):
                return False
        elif term not in labels:
            return False
    return True


@dataclass(frozen=True, slots=True)
class WatchQuery:
    """One watch request's parameters."""

    namespace: str
    field_selector: str
    label_selector: str
    bookmarks: bool
    timeout: float
    resource_version: int | None  # None: start with every object as ADDED

    @classmethod
    def of(cls, request: web.Request, namespace: str) -> WatchQuery:
        query = request.query
        rv = query.get("resourceVersion", "")
        return cls(
            namespace,
            query.get("fieldSelector", ""),
            query.get("labelSelector", ""),
            _flag(query.get("allowWatchBookmarks")),
            float(query.get("timeoutSeconds", "0") or 0) or 1800.0,
            None if rv in ("", "0") else _rv(rv),  # a bad one is a 400, before streaming
        )

    def visible(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.namespace and obj["metadata"].get("namespace") != self.namespace:
            return False
        return _selector_matches(obj, self.field_selector, self.label_selector)


class ApiServerDouble:
    """Owns the store and an aiohttp server that can go down and come back."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        bookmark_interval: float = 5.0,
        store: ObjectStore | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.bookmark_interval = bookmark_interval
        self.store = store or ObjectStore()
        self._runner: web.AppRunner | None = None
        self._continues: dict[str, tuple[int, list[Obj]]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) log for tests
        self.authorizations: set[str] = set()  # Authorization headers seen
        self._failures: list[tuple[str, str, int, list[int]]] = []

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(
            runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context
        )
        await site.start()
        if self.port == 0:
            server = site._server
            assert isinstance(server, asyncio.Server)
            self.port = server.sockets[0].getsockname()[1]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and cut every open connection, as a crashed server would."""
        self.store.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def outage(self, seconds: float) -> None:
        await self.stop()
        await asyncio.sleep(seconds)
        await self.start()

    def drop_watches(self) -> None:
        self.store.drop_watches()

    def fail(self, path: str, code: int, *, times: int = 1, with_query: str = "") -> None:
        """Answer the next `times` requests to `path` (whose query has the key
        `with_query`, if given) with an error Status of `code`."""
        self._failures.append((path, with_query, code, [times]))

    def _injected(self, request: web.Request) -> web.Response | None:
        for path, key, code, left in self._failures:
            if request.path == path and left[0] > 0 and (not key or key in request.query):
                left[0] -= 1
                reason = {403: "Forbidden", 410: "Expired", 500: "InternalError"}.get(
                    code, "Injected"
                )
                return _error(StoreError(code, reason, f"injected {code} for {path}"))
        return None

    def compact(self) -> None:
        self.store.compact()
        self._continues.clear()

    # -- dispatch -----------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if "Authorization" in request.headers:
            self.authorizations.add(request.headers["Authorization"])
        injected = self._injected(request)
        if injected is not None:
            return injected
        path = request.path.rstrip("/")
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/version":
            return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-double"})
        discovery = self._discovery(path)
        if discovery is not None:
            return web.json_response(discovery)
        match = _PATH.match(path)
        rtype = None
        if match:
            group = match["g"] or ""
            with contextlib.suppress(KeyError):
                rtype = find_type(group, match["cv"] or match["v"], match["plural"])
        if match is None or rtype is None:
            return _error(StoreError(404, "NotFound", f"the server could not find {path}"))
        try:
            return await self._resource(request, rtype, match["ns"] or "", match)
        except StoreError as exc:
            return _error(exc)

    def _discovery(self, path: str) -> Obj | None:
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        groups: dict[str, list[str]] = {}
        for t in RESOURCE_TYPES:
            if t.group:
                groups.setdefault(t.group, [])
                if t.version not in groups[t.group]:
                    groups[t.group].append(t.version)
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g,
                        "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                        "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                    }
                    for g, vs in groups.items()
                ],
            }
        gv = path.removeprefix("/apis/") if path.startswith("/apis/") else None
        if path == "/api/v1":
            gv = "v1"
        if gv is None or gv.count("/") > 1:
            return None
        resources = [
            {
                "name": t.plural,
                "singularName": t.kind.lower(),
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }
            for t in RESOURCE_TYPES
            if t.api_version == gv
        ]
        if not resources:
            return None
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }

    async def _resource(
        self, request: web.Request, rtype: ResourceType, ns: str, match: re.Match[str]
    ) -> web.StreamResponse:
        name, sub, method = match["name"], match["sub"], request.method
        if name is None:
            if method == "GET":
                if _flag(request.query.get("watch")):
                    return await self._watch(request, rtype, ns)
                return self._list(request, rtype, ns)
            if method == "POST":
                created = self.store.create(rtype, await request.json(), ns)
                return web.json_response(created, status=201)
            raise StoreError(405, "MethodNotAllowed", f"{method} not allowed on a collection")
        if method == "GET":
            return web.json_response(self.store.get(rtype, ns, name))
        if method == "DELETE":
            return web.json_response(self.store.delete(rtype, ns, name))
        body = await request.json()
        if method == "PUT":
            body.setdefault("metadata", {}).update(name=name, namespace=ns)
            return web.json_response(self.store.update(rtype, body, status_only=sub is not None))
        if method == "PATCH" and sub == "status":
            ctype = request.content_type
            if ctype != "application/merge-patch+json":
                raise StoreError(415, "UnsupportedMediaType", f"unsupported patch type {ctype}")
            return web.json_response(self.store.patch_status(rtype, ns, name, body))
        raise StoreError(405, "MethodNotAllowed", f"{method} not supported here")

    # -- list ---------------------------------------------------------------

    def _list(self, request: web.Request, rtype: ResourceType, ns: str) -> web.Response:
        query = request.query
        token = query.get("continue", "")
        if token:
            try:
                key = json.loads(base64.urlsafe_b64decode(token))
                list_rv, snapshot = self._continues[key["id"]]
                start = int(key["start"])
            except (KeyError, ValueError) as exc:
                raise Gone("The provided continue parameter is too old to display") from exc
            if list_rv < self.store.floor:
                raise Gone("The provided continue parameter is too old to display")
        else:
            rv = query.get("resourceVersion", "")
            if query.get("resourceVersionMatch") == "Exact" and rv and _rv(rv) < self.store.floor:
                raise Gone(f"too old resource version: {rv} ({self.store.floor})")
            fsel, lsel = query.get("fieldSelector", ""), query.get("labelSelector", "")
            snapshot = [
                o
                for o in self.store.items(rtype)
                if (not ns or o["metadata"].get("namespace") == ns)
                and _selector_matches(o, fsel, lsel)
            ]
            list_rv, start = self.store.rv, 0
        limit = int(query.get("limit", "0") or 0)
        end = start + limit if limit > 0 else len(snapshot)
        meta: Obj = {"resourceVersion": str(list_rv)}
        if end < len(snapshot):
            ident = token and json.loads(base64.urlsafe_b64decode(token))["id"]
            ident = ident or f"c{len(self._continues) + 1}-{list_rv}"
            self._continues[ident] = (list_rv, snapshot)
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"id": ident, "start": end}).encode()
            ).decode()
        # Like kube-apiserver, list items carry neither kind nor apiVersion.
        page = snapshot[start:end]
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in page]
        body = {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.api_version,
            "metadata": meta,
            "items": items,
        }
        return web.Response(body=encode(body), content_type="application/json")

    # -- watch --------------------------------------------------------------

    async def _watch(
        self, request: web.Request, rtype: ResourceType, ns: str
    ) -> web.StreamResponse:
        watch = WatchQuery.of(request, ns)
        sub = Subscriber(rtype)
        self.store.subscribers.add(sub)  # before the replay, so nothing falls in between
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            sent = await self._replay(resp, rtype, watch)
            if sent is not None:
                await self._follow(request, resp, sub, watch, sent)
        except ConnectionResetError:
            pass  # the client went away: that ends this watch
        finally:
            self.store.subscribers.discard(sub)
        return resp

    async def _replay(
        self, resp: web.StreamResponse, rtype: ResourceType, watch: WatchQuery
    ) -> int | None:
        """What happened since the requested resourceVersion (or, without one,
        every object as ADDED). None when that history is gone (ERROR 410 sent)."""
        store = self.store
        if watch.resource_version is None:
            for obj in store.items(rtype):
                if watch.visible(obj):
                    await resp.write(encode({"type": "ADDED", "object": obj}) + b"\n")
            return store.rv
        try:
            backlog = store.changes_since(rtype, watch.resource_version)
        except Gone as exc:
            event = {"type": "ERROR", "object": _status(410, "Expired", exc.message)}
            await resp.write(encode(event) + b"\n")
            return None
        for change in backlog:
            await self._send(resp, change, watch)
        return max([watch.resource_version] + [c.rv for c in backlog])

    async def _follow(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        sub: Subscriber,
        watch: WatchQuery,
        sent: int,
    ) -> None:
        """New changes as they happen, bookmarks when idle, until timeoutSeconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + watch.timeout
        while (left := deadline - loop.time()) > 0:
            try:
                item = await asyncio.wait_for(sub.queue.get(), min(left, self.bookmark_interval))
            except TimeoutError:
                if watch.bookmarks and loop.time() < deadline:
                    await resp.write(self._bookmark(sub.rtype) + b"\n")
                continue
            if item is None:
                if request.transport is not None:
                    request.transport.abort()
                return
            if isinstance(item, bytes):
                await resp.write(item + b"\n")
            elif item.rv > sent:
                await self._send(resp, item, watch)
                sent = item.rv

    def _bookmark(self, rtype: ResourceType) -> bytes:
        # Every change of this type up to now was sent: the queue is empty.
        mark = {
            "kind": rtype.kind,
            "apiVersion": rtype.api_version,
            "metadata": {"resourceVersion": str(self.store.rv)},
        }
        return encode({"type": "BOOKMARK", "object": mark})

    async def _send(self, resp: web.StreamResponse, change: Change, watch: WatchQuery) -> None:
        now, before = watch.visible(change.obj), watch.visible(change.prev)
        etype = change.type
        if etype == "MODIFIED":
            # A selector filters a watch: leaving it reads as DELETED, entering as ADDED.
            if now and not before:
                etype = "ADDED"
            elif before and not now:
                etype = "DELETED"
            elif not now:
                return
        elif not now:
            return
        await resp.write(encode({"type": etype, "object": change.obj}) + b"\n")
