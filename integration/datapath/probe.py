"""Test servers and clients that run inside pods and print JSON.

probe.py tcp-server PORT NAME       answer each connection with who we are
probe.py udp-server PORT NAME       and whom we see as the peer, then close
probe.py tcp-client HOST PORT N     N connects; one JSON line of results
probe.py udp-client HOST PORT N     N sockets, one datagram each
probe.py udp-connected-client H P N the same over connect()ed UDP sockets
probe.py tcp-loop HOST PORT STOP    connect until the file STOP exists
probe.py tcp-hold HOST PORT         one connection kept open; "ping" on stdin
probe.py origdst-server PORT        a proxy stand-in: reports SO_ORIGINAL_DST
probe.py http-server PORT NAME      HTTP: answer GETs with who we are and the peer
probe.py http-client HOST PORT N H  N GETs with Host: H, one connection each
probe.py connect-bench HOST PORT N  time N connects (µs p50/p99, JSON)
probe.py http-get URL               print a URL's body (retries until it answers)
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys
import threading
import time
from collections import Counter

SO_ORIGINAL_DST = 80


def _fmt(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _answer(conn: socket.socket, name: str) -> None:
    with conn:
        peer = _fmt(conn.getpeername())
        conn.sendall(json.dumps({"backend": name, "peer": peer}).encode() + b"\n")
        try:
            while conn.recv(4096):  # held connections send pings
                conn.sendall(json.dumps({"backend": name, "peer": peer}).encode() + b"\n")
        except OSError:
            pass


def tcp_server(port: int, name: str) -> None:
    srv = socket.create_server(("0.0.0.0", port), backlog=512)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_answer, args=(conn, name), daemon=True).start()


def udp_server(port: int, name: str) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        _, peer = srv.recvfrom(2048)
        srv.sendto(json.dumps({"backend": name, "peer": _fmt(peer)}).encode(), peer)


def _answer_origdst(conn: socket.socket) -> None:
    with conn:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        dport, dip = struct.unpack("!2xH4s8x", raw)
        reply = {
            "backend": "proxy",
            "peer": _fmt(conn.getpeername()),
            "orig": f"{socket.inet_ntoa(dip)}:{dport}",
        }
        line = json.dumps(reply).encode() + b"\n"
        conn.sendall(line)
        try:
            while conn.recv(4096):
                conn.sendall(line)
        except OSError:
            pass


def origdst_server(port: int) -> None:
    """Stands in for Envoy: asks the kernel where each connection was headed."""
    srv = socket.create_server(("0.0.0.0", port), backlog=512)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_answer_origdst, args=(conn,), daemon=True).start()


def _one_tcp(host: str, port: int) -> dict[str, object]:
    start = time.monotonic()
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect((host, port))
        peername = _fmt(s.getpeername())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data:
            return {"error": "EOF", "seconds": time.monotonic() - start}
        reply: dict[str, object] = json.loads(data)
        reply["getpeername"] = peername
        return reply
    except OSError as exc:
        code = exc.errno or 0
        return {"error": errno.errorcode.get(code, str(exc)), "seconds": time.monotonic() - start}
    finally:
        s.close()


def tcp_client(host: str, port: int, count: int) -> None:
    print(json.dumps([_one_tcp(host, port) for _ in range(count)]), flush=True)


def udp_client(host: str, port: int, count: int, connected: bool = False) -> None:
    """Unconnected: sendto/recvfrom. Connected: connect/send/recvfrom + getpeername."""
    out: list[dict[str, object]] = []
    for _ in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            try:
                if connected:
                    s.connect((host, port))
                    s.send(b"hi")
                else:
                    s.sendto(b"hi", (host, port))
                data, src = s.recvfrom(2048)
                reply: dict[str, object] = json.loads(data)
                reply["from"] = _fmt(src)
                if connected:
                    reply["getpeername"] = _fmt(s.getpeername())
                out.append(reply)
            except OSError as exc:
                out.append({"error": errno.errorcode.get(exc.errno or 0, str(exc))})
    print(json.dumps(out), flush=True)


def tcp_loop(host: str, port: int, stop: str) -> None:
    """Connect back to back until told to stop; count backends and errors."""
    backends: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    print("ready", flush=True)
    while not os.path.exists(stop):
        r = _one_tcp(host, port)
        if "error" in r:
            errors[str(r["error"])] += 1
        else:
            backends[str(r["backend"])] += 1
    print(json.dumps({"backends": backends, "errors": errors}), flush=True)


def tcp_hold(host: str, port: int) -> None:
    """One long-lived connection: each stdin line sends a ping, prints the answer."""
    s = socket.create_connection((host, port), timeout=10)
    f = s.makefile("rb")
    print(f.readline().decode().strip(), flush=True)
    for _ in sys.stdin:
        try:
            s.sendall(b"ping")
            line = f.readline().decode().strip()
            print(line or json.dumps({"error": "EOF"}), flush=True)
        except OSError as exc:
            print(json.dumps({"error": errno.errorcode.get(exc.errno or 0, str(exc))}), flush=True)


def http_get(url: str) -> None:
    """Fetch a URL (Envoy's admin on the node's loopback) until it answers."""
    import urllib.request

    for _ in range(600):
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                print(resp.read().decode(), flush=True)
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} never answered")


def http_server(port: int, name: str) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"backend": name, "peer": _fmt(self.client_address)}).encode()
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


def http_client(host: str, port: int, count: int, host_header: str) -> None:
    """N GETs, one connection each; the backend's JSON or the error per request."""
    import http.client

    out: list[dict[str, object]] = []
    for _ in range(count):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", "/get", headers={"Host": host_header, "Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            reply = json.loads(body) if resp.status == 200 else {"body": body.decode()[:200]}
            reply["status"] = resp.status
            reply["via"] = resp.getheader("server", "")
            out.append(reply)
        except OSError as exc:
            out.append({"error": errno.errorcode.get(exc.errno or 0, str(exc))})
        finally:
            conn.close()
    print(json.dumps(out), flush=True)


def connect_bench(host: str, port: int, count: int) -> None:
    """Time socket()+connect() (the handshake) over N connections; JSON µs stats."""
    samples: list[float] = []
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        start = time.perf_counter_ns()
        s.connect((host, port))
        samples.append((time.perf_counter_ns() - start) / 1000)
        s.close()  # linger 0: RST, so no TIME_WAIT piles up between runs
    ordered = sorted(samples)
    pick = {"p50": ordered[len(ordered) // 2], "p99": ordered[int(len(ordered) * 0.99)]}
    # In order, for a caller that pools several runs (bench/kernel_path.py).
    print(json.dumps({**pick, "samples": [round(s, 1) for s in samples]}), flush=True)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "tcp-server":
        tcp_server(int(args[0]), args[1])
    elif mode == "udp-server":
        udp_server(int(args[0]), args[1])
    elif mode == "origdst-server":
        origdst_server(int(args[0]))
    elif mode == "tcp-client":
        tcp_client(args[0], int(args[1]), int(args[2]))
    elif mode == "udp-client":
        udp_client(args[0], int(args[1]), int(args[2]))
    elif mode == "udp-connected-client":
        udp_client(args[0], int(args[1]), int(args[2]), connected=True)
    elif mode == "tcp-loop":
        tcp_loop(args[0], int(args[1]), args[2])
    elif mode == "http-server":
        http_server(int(args[0]), args[1])
    elif mode == "http-client":
        http_client(args[0], int(args[1]), int(args[2]), args[3])
    elif mode == "connect-bench":
        connect_bench(args[0], int(args[1]), int(args[2]))
    elif mode == "http-get":
        http_get(args[0])
    elif mode == "tcp-hold":
        tcp_hold(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
