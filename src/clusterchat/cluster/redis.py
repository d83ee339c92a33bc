"""The ``redis-server`` command line for a private server, loopback-only by default.

A cluster (or a test) starts its own redis-server on a free loopback port, in
the foreground, persistence off unless asked for (as centrifuge's compose
file does with ``--save "" --appendonly no``). Binding anything but loopback
takes a deliberate second argument: a password (``--requirepass``), so that
Redis' protected mode stays on, and the address must belong to a private
network (RFC 1918, or IPv6 unique local): the several-hosts test binds one
inside a network namespace it made (tests/integration/test_hosts.py).
``redis_argv`` is the one place this command line is built: ``clusterchat
up``, the benchmark and the tests' Redis fixture all use it, so they run
Redis with the same settings (``PUBSUB_OUTPUT_BUFFER`` included). With ``--loglevel warning`` the
"Ready to accept connections" line is not logged: wait for the port instead
(``processes.wait_for_port``).
"""

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from clusterchat.cluster.errors import MissingDependency
from clusterchat.cluster.processes import find_executable

__all__ = [
    "PRIVATE_NETWORKS",
    "PUBSUB_OUTPUT_BUFFER",
    "MissingDependency",
    "find_executable",
    "redis_argv",
]

REDIS_PACKAGE = "redis-server"

#: A subscriber that Redis disconnects for a full output buffer loses what was
#: queued for it (the publisher counted it as received): give bursts room.
#: Redis' own default is ``pubsub 32mb 8mb 60``.
PUBSUB_OUTPUT_BUFFER = ("--client-output-buffer-limit", "pubsub 256mb 128mb 60")

#: The networks a password-protected server may bind beyond loopback: RFC 1918
#: and IPv6 unique local addresses, never a public or unspecified one.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def redis_argv(
    port: int,
    dir: Path,
    *,
    host: str = "127.0.0.1",
    password: str | None = None,
    persistence: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """Build the argv for a foreground redis-server, bound to a loopback address by default.

    Args:
        port: TCP port to listen on.
        dir: Working directory of the server (dump and AOF files go here).
        host: The address to bind: a loopback address; or, only together with
            ``password``, an address of a private network (``PRIVATE_NETWORKS``)
            that the caller controls, such as one inside a network namespace it
            made. Anything else is refused.
        password: The default user's password (``--requirepass``; clients give
            it in the URL, ``redis://:PASSWORD@host:port/0``). Protected mode
            stays on, so without one Redis would refuse every client that does
            not come over loopback. It is visible to local users in the process
            list: for a shared machine use a configuration file instead.
        persistence: Keep Redis' default RDB snapshots instead of turning them off.
        extra: More ``--option value`` arguments, appended last so they win
            (a test may set a smaller ``--client-output-buffer-limit``).

    Returns:
        The command line, starting with the absolute path of redis-server.

    Raises:
        MissingDependency: redis-server is not installed.
        ValueError: ``host`` is not a loopback address, and not a private one
            given with a password.
    """
    address = ipaddress.ip_address(host)
    if not address.is_loopback:
        if password is None:
            raise ValueError(f"redis must bind a loopback address, not {host} (without a password)")
        if not any(address in network for network in PRIVATE_NETWORKS):
            raise ValueError(f"redis must bind a loopback or private address, not {host}")
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
    if password is not None:
        argv += ["--requirepass", password]
    if not persistence:
        argv += ["--save", "", "--appendonly", "no"]
    argv += list(extra)
    return argv
