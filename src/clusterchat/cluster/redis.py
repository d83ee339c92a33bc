"""The ``redis-server`` command line for a private, loopback-only server.

A cluster (or a test) starts its own redis-server on a free loopback port, in
the foreground, persistence off unless asked for (as centrifuge's compose
file does with ``--save "" --appendonly no``). ``redis_argv`` is the one place
this command line is built: ``clusterchat up``, the benchmark and the tests'
Redis fixture all use it, so they run Redis with the same settings
(``PUBSUB_OUTPUT_BUFFER`` included). With ``--loglevel warning`` the
"Ready to accept connections" line is not logged: wait for the port instead
(``processes.wait_for_port``).
"""

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from clusterchat.cluster.errors import MissingDependency
from clusterchat.cluster.processes import find_executable

__all__ = ["PUBSUB_OUTPUT_BUFFER", "MissingDependency", "find_executable", "redis_argv"]

REDIS_PACKAGE = "redis-server"

#: A subscriber that Redis disconnects for a full output buffer loses what was
#: queued for it (the publisher counted it as received): give bursts room.
#: Redis' own default is ``pubsub 32mb 8mb 60``.
PUBSUB_OUTPUT_BUFFER = ("--client-output-buffer-limit", "pubsub 256mb 128mb 60")


def redis_argv(
    port: int,
    dir: Path,
    *,
    host: str = "127.0.0.1",
    persistence: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """Build the argv for a foreground redis-server bound to a loopback address.

    Args:
        port: TCP port to listen on.
        dir: Working directory of the server (dump and AOF files go here).
        host: The loopback address to bind; anything else is refused.
        persistence: Keep Redis' default RDB snapshots instead of turning them off.
        extra: More ``--option value`` arguments, appended last so they win
            (a test may set a smaller ``--client-output-buffer-limit``).

    Returns:
        The command line, starting with the absolute path of redis-server.

    Raises:
        MissingDependency: redis-server is not installed.
        ValueError: ``host`` is not a loopback address.
    """
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"redis must bind a loopback address, not {host}")
    argv = [
        find_executable("redis-server", REDIS_PACKAGE),
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(dir),
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--loglevel",
        "warning",
        *PUBSUB_OUTPUT_BUFFER,
    ]
    if not persistence:
        argv += ["--save", "", "--appendonly", "no"]
    argv += list(extra)
    return argv
