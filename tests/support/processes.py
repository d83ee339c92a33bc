"""Checks that processes a test started are really gone, and a polling wait.

A process counts as gone when it no longer exists or is a zombie: in a
container whose init does not reap orphans, a killed grandchild can stay a
zombie forever, yet it holds no sockets and runs no code.
"""

import signal
import time
from collections.abc import Callable
from pathlib import Path

from clusterchat.cluster import processes
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.processes import Child

__all__ = [
    "assert_stopped",
    "group_gone",
    "memory_kib",
    "pid_gone",
    "process_state",
    "start_on_free_port",
    "wait_until",
]

_PORT_ATTEMPTS = 3


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc (``R``, ``S``, ``T``, ``Z``...), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces: split after it.
    return stat.rsplit(")", 1)[1].split()[0]


def memory_kib(pid: int, field: str = "VmRSS") -> int | None:
    """A memory figure of ``pid`` in KiB from /proc/<pid>/status, or None if it is gone.

    Args:
        pid: The process.
        field: The line to read: ``VmRSS`` (resident set), ``VmHWM`` (its peak),
            ``RssAnon``...
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    return None


def pid_gone(pid: int) -> bool:
    """True if no running process has this pid (zombies count as gone)."""
    return process_state(pid) in (None, "Z", "X")


def group_gone(pgid: int) -> bool:
    """True if no running process belongs to process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            return False
    return True


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; return its last value.

    For synchronous code only (fixtures, sync tests); it sleeps between polls.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        time.sleep(interval)
    return True


def assert_stopped(child: Child) -> None:
    """Assert that ``child`` was reaped and nothing of its process group still runs."""
    assert child.popen.returncode is not None, f"{child.name} (pid {child.pid}) not reaped"
    assert pid_gone(child.pid), f"{child.name} (pid {child.pid}) still running"
    assert group_gone(child.pid), f"{child.name}'s process group {child.pid} still running"


def start_on_free_port(
    name: str,
    argv_for: Callable[[int], list[str]],
    *,
    log_path: Path,
    ready: str,
    timeout: float,
    stop_signal: int = signal.SIGTERM,
    cwd: Path | None = None,
) -> tuple[int, Child]:
    """Start a server on a free loopback port and wait for ``ready`` in its log.

    Another process may take the port between ``free_port()`` and the
    server's bind: a start that failed with "address already in use" is tried
    again on another port (three times in all).

    Args:
        name: A label for messages.
        argv_for: The server's command line for a port.
        log_path: Its log (stdout and stderr, appended to).
        ready: What it writes once it accepts connections.
        timeout: Seconds to wait for ``ready``.
        stop_signal: How to stop a start that failed.
        cwd: Its working directory.

    Returns:
        The port and the running child (the caller stops it).

    Raises:
        ChildFailed: It exited or did not become ready.
    """
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = free_port("127.0.0.1")
        child = processes.spawn(name, argv_for(port), log_path=log_path, cwd=cwd)
        try:
            processes.wait_for_log(child, ready, timeout)
        except processes.ChildFailed:
            processes.stop(child, timeout=timeout, sig=stop_signal)
            taken = "address already in use" in processes.log_tail(child).lower()
            if not taken or attempt == _PORT_ATTEMPTS:
                raise
            continue
        return port, child
    raise AssertionError("unreachable")  # pragma: no cover
