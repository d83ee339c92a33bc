"""The ``clusterchat node`` command line: the one place it is built.

``clusterchat up`` (cluster/launcher.py), the benchmark and the tests' node
fixture all start their nodes with ``node_argv``, so that what the benchmark
and the tests run is what ``up`` gives users; each adds only its own flags
(``up``: ``--proxy-protocol`` behind nginx) through ``extra``.
"""

import sys
from collections.abc import Sequence

__all__ = ["NODE_READY", "node_argv", "node_program", "node_ready"]

#: What a node prints on standard error once it accepts connections
#: (followed by ``HOST:PORT``).
NODE_READY = "listening on"


def node_ready(workers: int) -> str:
    """What a node started with ``--workers workers`` prints once all of it listens.

    One process prints ``NODE_READY``; a supervisor prints ``N workers
    listening on`` after every worker did (cluster/workers.py).
    """
    return NODE_READY if workers == 1 else f"{workers} workers {NODE_READY}"


def node_program() -> list[str]:
    """``clusterchat node`` under this Python, before its arguments."""
    return [sys.executable, "-m", "clusterchat", "node"]


def node_argv(
    port: int,
    *,
    db_url: str,
    redis_url: str | None = None,
    node_id: str | None = None,
    host: str = "127.0.0.1",
    workers: int = 1,
    extra: Sequence[str] = (),
) -> list[str]:
    """Build the argv of one foreground ``clusterchat node`` process.

    The node runs under this Python (``sys.executable -m clusterchat``), so it
    is the same clusterchat as the caller's.

    Args:
        port: The TCP port it listens on.
        db_url: Its database URL (shared by the nodes of one cluster).
        redis_url: The cluster's Redis URL; None runs a single node (no bus).
        node_id: Its name in presence and logs; None lets the node pick one.
        host: The address it listens on.
        workers: Its ``--workers`` (1: one process, whose pid is the node's;
            more: a supervisor and that many node processes on the port).
        extra: More ``clusterchat node`` arguments, appended last so they win.

    Returns:
        The command line.
    """
    argv = [*node_program(), "--host", host, "--port", str(port)]
    argv += ["--db", db_url, "--workers", str(workers)]
    if redis_url is not None:
        argv += ["--redis", redis_url]
    if node_id is not None:
        argv += ["--node-id", node_id]
    argv += list(extra)
    return argv
