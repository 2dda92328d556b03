"""Waiting for an Envoy listener means waiting for listen(), not the listing.

Envoy lists an active listener before its workers call listen(); a connection
in that gap is refused (seen as flaky Gateway API conformance cases). The
check reads the kernel's socket table, so real sockets show it here.
"""

from __future__ import annotations

import socket

from nodemesh.node.envoy_process import tcp_listening


def test_a_bound_socket_is_not_listening_until_listen() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert not tcp_listening("127.0.0.1", port)
        sock.listen()
        assert tcp_listening("127.0.0.1", port)
        assert not tcp_listening("127.0.0.2", port)  # another address, same port


def test_a_wildcard_listener_serves_every_address() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        assert tcp_listening("127.9.8.7", sock.getsockname()[1])


def test_ipv6_loopback() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::1", 0))
        sock.listen()
        assert tcp_listening("::1", sock.getsockname()[1])


def test_not_an_address() -> None:
    assert not tcp_listening("envoy.sock", 80)
