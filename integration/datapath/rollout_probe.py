"""Helpers for test_datapath_rollout.py that run inside pods or the node.

rollout_probe.py http-loop HOST PORT HOSTHDR STOP  GETs back to back, one
        connection each, until the file STOP exists; prints "ready" first and,
        per request, the backend and which Envoy answered, as one JSON line
        at the end (and the running count in STOP.count, for polling)
rollout_probe.py slow-loop HOST PORT HOSTHDR STOP WORKERS  as http-loop, with
        WORKERS requests for /slow in flight at all times (one connection
        each); the JSON line and STOP.count as http-loop's
rollout_probe.py http-server PORT NAME DELAY  answers GET like probe.py's
        http-server, /slow after DELAY seconds; prints "ready"
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _one(host: str, port: int, host_header: str, path: str = "/get") -> tuple[str, str]:
    """(backend or error, the Envoy that answered)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host_header, "Connection": "close"})
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


def slow_loop(host: str, port: int, host_header: str, stop: str, workers: int) -> None:
    answers: Counter[str] = Counter()
    envoys: Counter[str] = Counter()
    lock = threading.Lock()

    def work() -> None:
        while not os.path.exists(stop):
            answer, envoy = _one(host, port, host_header, "/slow")
            with lock:
                answers[answer] += 1
                envoys[envoy] += 1
                n = answers.total()
                tmp = f"{stop}.count.{threading.get_ident()}"
                with open(tmp, "w") as f:
                    f.write(json.dumps({"n": n, "envoys": envoys}))
                os.replace(tmp, f"{stop}.count")

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    print("ready", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"answers": answers, "envoys": envoys, "n": answers.total()}), flush=True)


def http_server(port: int, name: str, delay: float) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/slow":
                time.sleep(delay)  # held open across the old Envoy's drain
            body = json.dumps({"backend": name}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print("ready", flush=True)
    srv.serve_forever()


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "http-loop":
        http_loop(args[0], int(args[1]), args[2], args[3])
    elif mode == "slow-loop":
        slow_loop(args[0], int(args[1]), args[2], args[3], int(args[4]))
    elif mode == "http-server":
        http_server(int(args[0]), args[1], float(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
