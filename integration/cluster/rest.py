"""A small JSON REST client for the test cluster (admin client certificate or a
bearer token), for what tests do besides kubectl: play the kubelet's status
role, poll readiness, create objects in bulk for the bench."""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Raw = dict[str, Any]


class ApiError(Exception):
    def __init__(self, code: int, message: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: HTTP {code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Rest:
    server: str
    ca: Path
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        self._ctx = ssl.create_default_context(cafile=str(self.ca))
        if self.cert and self.key:
            self._ctx.load_cert_chain(str(self.cert), str(self.key))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            message = raw.decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                message = json.loads(raw).get("message", message)
            raise ApiError(exc.code, message, method, path) from None
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            return payload.decode(errors="replace")  # /readyz and friends answer text

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any, kind: str = "merge") -> Any:
        return self.request("PATCH", path, body, content_type=f"application/{kind}-patch+json")

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body)
