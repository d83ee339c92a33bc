"""Free loopback port allocation for child servers and tests.

The kernel picks a free port when a socket binds port 0; we read it and close
the socket. Another process may take the port before the caller binds it (a
short race every port-0 scheme has), so callers that start a child on the
port should treat a failed start as retryable.
"""

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago.

    Args:
        host: The address to bind, loopback by default.

    Returns:
        A port number chosen by the kernel.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
