"""Tests for clusterchat.cluster.ports."""

import socket

from clusterchat.cluster.ports import free_port


def test_free_port_can_be_bound_on_loopback() -> None:
    """The returned port is a real TCP port that a server can listen on at once."""
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert sock.getsockname() == ("127.0.0.1", port)


def test_free_port_is_not_a_listening_port() -> None:
    """A port in use by a listener is never returned while that listener holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        assert all(free_port() != taken for _ in range(50))
