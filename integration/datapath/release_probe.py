"""Helpers for test_datapath_release.py that run inside pods and print JSON.

release_probe.py lazy-proxy PORT       a proxy stand-in that accepts only after a
                                       line on stdin, then reports SO_ORIGINAL_DST
                                       of every connection waiting in its backlog
release_probe.py send-close HOST PORT N  N connections: connect, send, close
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import sys

SO_ORIGINAL_DST = 80


def _orig_dst(conn: socket.socket) -> str:
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError as exc:
        return f"error {errno.errorcode.get(exc.errno or 0, str(exc))}"
    port, addr = struct.unpack("!2xH4s8x", raw)
    return f"{socket.inet_ntoa(addr)}:{port}"


def lazy_proxy(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port), backlog=512)
    print("ready", flush=True)
    sys.stdin.readline()
    srv.setblocking(False)
    origs: list[str] = []
    while True:
        try:
            conn, _ = srv.accept()
        except BlockingIOError:
            break
        with conn:
            origs.append(_orig_dst(conn))
    print(json.dumps(origs), flush=True)
    sys.stdin.readline()  # keep the listener until told to go


def send_close(host: str, port: int, count: int) -> None:
    errors: list[str] = []
    for _ in range(count):
        try:
            with socket.create_connection((host, port), timeout=10) as s:
                s.sendall(b"hello")
        except OSError as exc:
            errors.append(errno.errorcode.get(exc.errno or 0, str(exc)))
    print(json.dumps({"count": count, "errors": errors}), flush=True)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "lazy-proxy":
        lazy_proxy(int(args[0]))
    elif mode == "send-close":
        send_close(args[0], int(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
