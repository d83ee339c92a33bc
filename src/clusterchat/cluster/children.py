"""Starting a cluster's Redis and nodes, each ready before the call returns.

``clusterchat up`` (cluster/launcher.py) and the benchmark start their
children through these two functions, so both run Redis with ``redis_argv``'s
command line and nodes with ``node_argv``'s, wait for readiness the same way,
and leave nothing running when a child does not become ready. Each child
lives in its own session and is stopped by pid (``cluster.processes``).
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

from clusterchat.cluster.errors import ChildFailed
from clusterchat.cluster.node_command import node_argv, node_ready
from clusterchat.cluster.processes import Child, spawn, stop, wait_for_log, wait_for_port
from clusterchat.cluster.redis import redis_argv

__all__ = ["start_node", "start_redis"]


def start_redis(
    port: int,
    dir: Path,
    *,
    log_path: Path,
    timeout: float,
    host: str = "127.0.0.1",
    persistence: bool = False,
) -> Child:
    """Start redis-server (``redis_argv``) and return once it accepts connections.

    Args:
        port: Its TCP port.
        dir: Its working directory (created if missing).
        log_path: Where its output goes (appended).
        timeout: Seconds it may take to accept.
        host: The loopback address it binds.
        persistence: Keep Redis' snapshots (off: Redis is only a bus).

    Returns:
        The running server.

    Raises:
        ChildFailed: It exited or did not accept in time; it is stopped.
        MissingDependency: redis-server is not installed.
    """
    dir.mkdir(parents=True, exist_ok=True)
    argv = redis_argv(port, dir.resolve(), host=host, persistence=persistence)
    child = spawn("redis", argv, log_path=log_path)
    try:
        wait_for_port(host, port, timeout, child)
    except ChildFailed:
        stop(child)
        raise
    return child


def start_node(
    name: str,
    port: int,
    *,
    db_url: str,
    redis_url: str | None,
    log_path: Path,
    timeout: float,
    host: str = "127.0.0.1",
    workers: int = 1,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Child:
    """Start a ``clusterchat node`` (``node_argv``) and return once it listens.

    Args:
        name: Its node id, and the child's name.
        port: Its TCP port.
        db_url: The cluster's database URL.
        redis_url: The cluster's Redis URL (None: a single node).
        log_path: Where its output goes (appended).
        timeout: Seconds it may take to listen (every worker of it: ``node_ready``).
        host: The address it listens on.
        workers: Its ``--workers`` (1: one process).
        extra: More ``clusterchat node`` arguments.
        env: Its complete environment (None: ours).

    Returns:
        The running node.

    Raises:
        ChildFailed: It exited or did not become ready in time; it is stopped.
    """
    argv = node_argv(
        port,
        db_url=db_url,
        redis_url=redis_url,
        node_id=name,
        host=host,
        workers=workers,
        extra=extra,
    )
    child = spawn(name, argv, log_path=log_path, env=env)
    try:
        wait_for_log(child, node_ready(workers), timeout)
    except ChildFailed:
        stop(child)
        raise
    return child
