"""``clusterchat node --workers N``: N node processes sharing one listening port.

Each worker is a full node of the cluster (its own node id, Redis connections,
presence and database pool), started as ``clusterchat node --workers 1
--reuse-port`` with the same arguments: every worker listens on the same
address with ``SO_REUSEPORT``, and the kernel spreads new connections over
them. Python runs one thread of chat at a time; workers use every core.

The supervisor (this module) holds no connection. It starts the workers,
forwards their output to its own standard error, and reports ready once all
of them listen. A worker that exits is started again; one that fails
``RESTART_LIMIT`` times in a row stops them all (exit 1). SIGTERM or SIGINT
is passed to every worker, each drains as a single node does (its sessions'
cursors saved, its presence removed), and the supervisor exits 0 when all
have. The workers get SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG``).

With port 0 the supervisor picks the port: it binds a ``SO_REUSEPORT``
socket to port 0 and keeps it (bound, never listening, so it takes no
connection) for as long as it runs, and the workers join that port.
"""

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

from clusterchat.cluster.node_command import NODE_READY, node_program, node_ready
from clusterchat.cluster.processes import die_with_parent

__all__ = ["RESTART_LIMIT", "run_workers", "workers_for"]

#: Failed starts in a row after which the supervisor gives up.
RESTART_LIMIT = 3
_READY_TIMEOUT = 60.0
_DRAIN_TIMEOUT = 60.0
_POLL = 0.2


def workers_for(requested: int) -> int:
    """How many workers ``--workers requested`` means (0: one per core)."""
    return requested if requested > 0 else max(1, os.cpu_count() or 1)


@dataclass
class _Worker:
    node_id: str
    argv: list[str]
    popen: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    failures: int = 0


def run_workers(
    node_args: Sequence[str], *, host: str, port: int, workers: int, node_id: str | None
) -> int:
    """Run ``workers`` node processes on ``host:port`` until SIGTERM/SIGINT; the exit status.

    Args:
        node_args: The ``clusterchat node`` arguments as given (each worker gets
            them, then its own ``--workers 1 --reuse-port --port --node-id``).
        host: The address they listen on.
        port: The shared port (0: one the supervisor picks).
        workers: How many (at least 2; one is a plain node).
        node_id: The base of the workers' node ids (``<id>-w1``...); None: random.
    """
    base = node_id or secrets.token_hex(4)
    with _reserved(host, port) as shared_port:
        pool = [
            _Worker(f"{base}-w{number}", _worker_argv(node_args, shared_port, f"{base}-w{number}"))
            for number in range(1, workers + 1)
        ]
        stopping: list[int] = []

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            stopping.append(signum)

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            status = _start_all(pool, stopping)
            if status is not None:
                return status
            print(
                f"clusterchat node {base}: {node_ready(workers)} {host}:{shared_port}"
                f" ({', '.join(w.node_id for w in pool)})",
                file=sys.stderr,
                flush=True,
            )
            return _supervise(pool, stopping)
        finally:
            _stop_all(pool)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _worker_argv(node_args: Sequence[str], port: int, node_id: str) -> list[str]:
    # The worker's own values last: argparse keeps the last of a repeated flag.
    own = ["--workers", "1", "--reuse-port", "--port", str(port), "--node-id", node_id]
    return [*node_program(), *node_args, *own]


@contextlib.contextmanager
def _reserved(host: str, port: int) -> Iterator[int]:
    """The shared port; with 0, one picked and held (bound, never listening) while we run."""
    if port != 0:
        yield port
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, 0))
        yield int(holder.getsockname()[1])


def _start(worker: _Worker) -> None:
    worker.ready.clear()
    worker.popen = subprocess.Popen(
        worker.argv,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    assert worker.popen.stderr is not None
    threading.Thread(target=_forward, args=(worker.popen.stderr, worker.ready), daemon=True).start()


def _forward(stream: IO[bytes], ready: threading.Event) -> None:
    """Copy a worker's output to ours, line by line; note when it listens."""
    for line in iter(stream.readline, b""):
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()
        if NODE_READY.encode() in line:
            ready.set()
    stream.close()


def _start_all(pool: list[_Worker], stopping: list[int]) -> int | None:
    """Start every worker and wait until all listen; an exit status if that failed."""
    for worker in pool:
        _start(worker)
    deadline = time.monotonic() + _READY_TIMEOUT
    while not all(w.ready.is_set() for w in pool):
        if stopping:
            return 0
        for worker in pool:
            assert worker.popen is not None
            code = worker.popen.poll()
            if code is not None and not worker.ready.is_set():
                print(
                    f"clusterchat node: worker {worker.node_id} exited with status {code}"
                    " before it listened",
                    file=sys.stderr,
                    flush=True,
                )
                return code if code > 0 else 1
        if time.monotonic() > deadline:
            print(
                f"clusterchat node: workers not listening after {_READY_TIMEOUT:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            return 1
        time.sleep(_POLL)
    return None


def _supervise(pool: list[_Worker], stopping: list[int]) -> int:
    """Restart workers that exit until asked to stop; 1 if one keeps failing."""
    while not stopping:
        time.sleep(_POLL)
        for worker in pool:
            assert worker.popen is not None
            code = worker.popen.poll()
            if code is None or stopping:
                continue
            worker.failures = 0 if worker.ready.is_set() else worker.failures + 1
            if worker.failures >= RESTART_LIMIT:
                print(
                    f"clusterchat node: worker {worker.node_id} failed to start"
                    f" {RESTART_LIMIT} times in a row; stopping",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            print(
                f"clusterchat node: worker {worker.node_id} exited with status {code};"
                " starting it again",
                file=sys.stderr,
                flush=True,
            )
            _start(worker)
    return 0


def _stop_all(pool: list[_Worker]) -> None:
    """SIGTERM to every worker; SIGKILL to those still draining after the timeout."""
    running = [w.popen for w in pool if w.popen is not None and w.popen.poll() is None]
    for popen in running:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _DRAIN_TIMEOUT
    for popen in running:
        try:
            popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
