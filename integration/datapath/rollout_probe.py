"""Helpers for test_datapath_rollout.py that run inside pods or the node.

rollout_probe.py http-loop HOST PORT HOSTHDR STOP  GETs back to back, one
        connection each, until the file STOP exists; prints "ready" first and,
        per request, the backend and which Envoy answered, as one JSON line
        at the end (and the running count in STOP.count, for polling)
rollout_probe.py post URL   POST to an Envoy admin URL, print the answer
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import sys
import urllib.request
from collections import Counter


def _one(host: str, port: int, host_header: str) -> tuple[str, str]:
    """(backend or error, the Envoy that answered)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/get", headers={"Host": host_header, "Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        envoy = resp.getheader("x-nodemesh-envoy", "none")
        if resp.status != 200:
            return f"status {resp.status}: {body.decode(errors='replace')[:80]}", envoy
        return str(json.loads(body)["backend"]), envoy
    except (OSError, http.client.HTTPException, ValueError) as exc:
        code = getattr(exc, "errno", None)
        return "error " + (errno.errorcode.get(code, str(exc)) if code else repr(exc)), "none"
    finally:
        conn.close()


def http_loop(host: str, port: int, host_header: str, stop: str) -> None:
    answers: Counter[str] = Counter()
    envoys: Counter[str] = Counter()
    print("ready", flush=True)
    n = 0
    while not os.path.exists(stop):
        answer, envoy = _one(host, port, host_header)
        answers[answer] += 1
        envoys[envoy] += 1
        n += 1
        if n % 10 == 0:
            tmp = f"{stop}.count.tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps({"n": n, "envoys": envoys}))
            os.replace(tmp, f"{stop}.count")
    print(json.dumps({"answers": answers, "envoys": envoys, "n": n}), flush=True)


def post(url: str) -> None:
    req = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=30) as resp:
        print(resp.read().decode(), flush=True)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "http-loop":
        http_loop(args[0], int(args[1]), args[2], args[3])
    elif mode == "post":
        post(args[0])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
