"""Servers and a connection matrix for the policy tests; runs inside pods.

policy_probe.py serve NAME TCPPORTS UDPPORTS   listen on each port (comma lists),
                                               answer with NAME; print "ready"
policy_probe.py loop HOST PORT STOP           TCP connects back to back until the file
                                               STOP exists; prints "ready", then the
                                               outcome counts as JSON
policy_probe.py try TIMEOUT JSON               JSON: [[host, port, "tcp"|"udp"], ...];
                                               tries all at once, prints one JSON
                                               list of outcomes in the same order

Outcomes: "ok" (the server answered), "EPERM" (refused at connect/sendto:
egress policy), "timeout" (no answer: a dropped SYN or datagram, ingress
policy), or another errno name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def _tcp_serve(port: int, name: str) -> None:
    srv = socket.create_server(("0.0.0.0", port), backlog=512)
    while True:
        conn, _ = srv.accept()
        with conn, contextlib.suppress(OSError):
            conn.sendall(name.encode() + b"\n")


def _udp_serve(port: int, name: str) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("0.0.0.0", port))
    while True:
        _, peer = srv.recvfrom(2048)
        # A reply egress policy refuses raises EPERM: the client times out.
        with contextlib.suppress(OSError):
            srv.sendto(name.encode(), peer)


def serve(name: str, tcp: str, udp: str) -> None:
    for text, fn in ((tcp, _tcp_serve), (udp, _udp_serve)):
        for port in filter(None, text.split(",")):
            threading.Thread(target=fn, args=(int(port), name), daemon=True).start()
    # The listeners bind in their threads; give each a moment by connecting once.
    print("ready", flush=True)
    threading.Event().wait()


def _err(exc: OSError) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    return errno.errorcode.get(exc.errno or 0, str(exc))


def _try(host: str, port: int, kind: str, timeout: float) -> str:
    family_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, family_type) as s:
        s.settimeout(timeout)
        try:
            if kind == "tcp":
                s.connect((host, port))
                return "ok" if s.recv(64) else "EOF"
            s.sendto(b"hi", (host, port))
            s.recvfrom(64)
            return "ok"
        except OSError as exc:
            return _err(exc)


def try_all(timeout: float, targets: list[list[object]]) -> None:
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        futures = [pool.submit(_try, str(h), int(str(p)), str(k), timeout) for h, p, k in targets]
        print(json.dumps([f.result() for f in futures]), flush=True)


def loop(host: str, port: int, stop: str) -> None:
    counts: dict[str, int] = {}
    print("ready", flush=True)
    while not os.path.exists(stop):
        got = _try(host, port, "tcp", 2.0)
        counts[got] = counts.get(got, 0) + 1
        if got != "ok":
            time.sleep(0.05)  # EPERM returns at once: do not spin
    print(json.dumps(counts), flush=True)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "serve":
        serve(args[0], args[1], args[2])
    elif mode == "loop":
        loop(args[0], int(args[1]), args[2])
    elif mode == "try":
        try_all(float(args[0]), json.loads(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
