"""IPv6 (and dual-stack) test servers and clients for pods; print JSON.

probe6.py tcp-server PORT NAME          on [::]: who we are, whom we see
probe6.py udp-server PORT NAME
probe6.py tcp-client HOST PORT N        N AF_INET6 connects (HOST may be ::ffff:a.b.c.d)
probe6.py udp-client HOST PORT N        N AF_INET6 sockets, sendto/recvfrom
probe6.py udp-connected-client H P N    the same over connect()ed sockets
probe6.py connect-bench HOST PORT N     N AF_INET6 connects, closed with RST

Addresses print as "[host]:port".
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import sys
import threading
import time


def _fmt(addr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}"


def _answer(conn: socket.socket, name: str) -> None:
    with conn:
        reply = {"backend": name, "peer": _fmt(conn.getpeername())}
        conn.sendall(json.dumps(reply).encode() + b"\n")


def tcp_server(port: int, name: str) -> None:
    srv = socket.create_server(("::", port), family=socket.AF_INET6, backlog=512)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_answer, args=(conn, name), daemon=True).start()


def udp_server(port: int, name: str) -> None:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    srv.bind(("::", port))
    print("ready", flush=True)
    while True:
        _, peer = srv.recvfrom(2048)
        srv.sendto(json.dumps({"backend": name, "peer": _fmt(peer)}).encode(), peer)


def _error(exc: OSError, start: float) -> dict[str, object]:
    code = errno.errorcode.get(exc.errno or 0, str(exc))
    return {"error": code, "seconds": time.monotonic() - start}


def _one_tcp(host: str, port: int) -> dict[str, object]:
    start = time.monotonic()
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.settimeout(10)
        try:
            s.connect((host, port))
            peername = _fmt(s.getpeername())
            data = b""
            # One line: probe.py's IPv4 servers hold the connection open.
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            if not data:
                return {"error": "EOF"}
            reply: dict[str, object] = json.loads(data)
            reply["getpeername"] = peername
            return reply
        except OSError as exc:
            return _error(exc, start)


def udp_client(host: str, port: int, count: int, connected: bool) -> None:
    out: list[dict[str, object]] = []
    for _ in range(count):
        start = time.monotonic()
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.settimeout(5)
            try:
                if connected:
                    s.connect((host, port))
                    s.send(b"hi")
                else:
                    s.sendto(b"hi", (host, port))
                data, src = s.recvfrom(2048)
                reply = json.loads(data)
                reply["from"] = _fmt(src)
                if connected:
                    reply["getpeername"] = _fmt(s.getpeername())
                out.append(reply)
            except OSError as exc:
                out.append(_error(exc, start))
    print(json.dumps(out), flush=True)


def connect_bench(host: str, port: int, count: int) -> None:
    """N connects (for the hooks' bpf_stats; RST on close: no TIME_WAIT pile)."""
    for _ in range(count):
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.connect((host, port))
    print(json.dumps({"connects": count}), flush=True)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "tcp-server":
        tcp_server(int(args[0]), args[1])
    elif mode == "udp-server":
        udp_server(int(args[0]), args[1])
    elif mode == "tcp-client":
        res = [_one_tcp(args[0], int(args[1])) for _ in range(int(args[2]))]
        print(json.dumps(res), flush=True)
    elif mode in ("udp-client", "udp-connected-client"):
        udp_client(args[0], int(args[1]), int(args[2]), mode == "udp-connected-client")
    elif mode == "connect-bench":
        connect_bench(args[0], int(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
