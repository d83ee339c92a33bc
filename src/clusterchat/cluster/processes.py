"""Child processes started by pid, waited on by condition, stopped by pid.

Synchronous and ``subprocess``-based: used by the ``clusterchat up`` launcher
and by the test fixtures, never from inside a running event loop (the waits
poll with ``time.sleep``; from async code call them through
``asyncio.to_thread``).

Each child runs in its own session (``start_new_session=True``), so a Ctrl-C
aimed at the parent's terminal does not reach the children directly: the
parent decides the stop order. Being a session leader also makes the child the
leader of its own process group; the hard signals (SIGSTOP, SIGCONT, SIGKILL)
go to that group, so helpers such as nginx workers are paused or killed with
their master. The group is only signalled while the leader is not yet reaped,
which is what keeps its pid (and so the group id) from being reused.
"""

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from clusterchat.cluster.errors import ChildFailed, MissingDependency

__all__ = [
    "Child",
    "ChildFailed",
    "MissingDependency",
    "die_with_parent",
    "find_executable",
    "kill",
    "log_tail",
    "pause",
    "resume",
    "spawn",
    "stop",
    "wait_for_log",
    "wait_for_port",
]

_PR_SET_PDEATHSIG = 1
_POLL_INTERVAL = 0.02
_TAIL_LINES = 40
# Debian installs servers in sbin, which is not on an ordinary user's PATH.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


@dataclass
class Child:
    """One started child process and the file its output goes to.

    Attributes:
        name: A short label for messages (``"redis"``, ``"node-1"``).
        argv: The command line it was started with.
        popen: The ``subprocess.Popen`` handle; it owns the reaping.
        log_path: The file that receives stdout and stderr (appended).
        log_start: Size of the log file when the child started; readiness
            checks only look at what this child wrote.
    """

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_start: int = 0

    @property
    def pid(self) -> int:
        """The child's process id (also its process group id)."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited (and is reaped), else None.

        Negative values mean "killed by that signal", as in ``subprocess``.
        """
        return self.popen.poll()

    def alive(self) -> bool:
        """Whether the child is still running (a paused child counts as running)."""
        return self.popen.poll() is None


def find_executable(name: str, debian_package: str) -> str:
    """Find an installed program on PATH or in the sbin directories.

    Args:
        name: The program (``"redis-server"``, ``"nginx"``).
        debian_package: What to ``apt-get install`` to get it, for the error message.

    Returns:
        The program's absolute path.

    Raises:
        MissingDependency: The program is not installed.
    """
    path = os.environ.get("PATH", os.defpath)
    found = shutil.which(name, path=os.pathsep.join([path, *_SBIN_DIRS]))
    if found is None:
        raise MissingDependency(f"{name} not found: apt-get install {debian_package}")
    return os.path.abspath(found)


def die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux prctl).

    The children live in sessions of their own (so a Ctrl-C meant for the
    parent does not hit them first); this keeps a parent that is SIGKILLed
    (``clusterchat up``, a test run) from leaving them behind. The signal comes
    when the *thread* that spawned the child exits, so spawn from a thread that
    lives as long as the child should.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Child:
    """Start ``argv`` as a child in a new session, output appended to ``log_path``.

    Args:
        name: A short label used in error messages.
        argv: The program and its arguments (no shell).
        log_path: File for stdout and stderr; created if missing, appended to.
        env: The complete environment for the child; None inherits ours.
        cwd: Working directory for the child; None keeps ours.

    Returns:
        The running child. The caller must eventually ``stop()`` or ``kill()`` it.

    Raises:
        OSError: The program could not be executed (for example not found).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        start = log.tell()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            preexec_fn=die_with_parent,
        )
    return Child(name=name, argv=list(argv), popen=popen, log_path=log_path, log_start=start)


def log_tail(child: Child, lines: int = _TAIL_LINES) -> str:
    """Return the last ``lines`` lines this child wrote to its log.

    Args:
        child: The child whose log to read.
        lines: How many lines at most.

    Returns:
        The text (decoded leniently), or a note if the log cannot be read.
    """
    try:
        with child.log_path.open("rb") as log:
            log.seek(child.log_start)
            data = log.read()
    except OSError as exc:
        return f"(log {child.log_path} unreadable: {exc})"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _failure(child: Child | None, what: str) -> ChildFailed:
    if child is None:
        return ChildFailed(what)
    return ChildFailed(
        f"{child.name} (pid {child.pid}): {what}\n"
        f"--- last lines of {child.log_path} ---\n{log_tail(child)}"
    )


def _check_alive(child: Child | None, waiting_for: str) -> None:
    if child is not None and not child.alive():
        raise _failure(child, f"exited with code {child.returncode} while {waiting_for}")


def wait_for_port(host: str, port: int, timeout: float, child: Child | None = None) -> None:
    """Poll until a TCP connection to ``host:port`` succeeds.

    Args:
        host: Address to connect to.
        port: Port to connect to.
        timeout: Seconds to wait in total.
        child: The process expected to listen; if it exits first, fail at once.

    Raises:
        ChildFailed: The child exited, or nothing accepted within ``timeout``.
    """
    waiting_for = f"waiting for {host}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(child, waiting_for)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _failure(child, f"timed out after {timeout:.1f}s {waiting_for}")
        try:
            with socket.create_connection((host, port), timeout=min(remaining, 1.0)):
                return
        except OSError:
            time.sleep(min(_POLL_INTERVAL, max(deadline - time.monotonic(), 0)))


def wait_for_log(child: Child, text: str, timeout: float) -> None:
    """Poll the child's log until ``text`` appears in what this child wrote.

    Args:
        child: The child whose log to watch.
        text: The substring to wait for.
        timeout: Seconds to wait in total.

    Raises:
        ChildFailed: The child exited without writing ``text``, or ``timeout`` passed.
    """
    waiting_for = f"waiting for {text!r} in its log"
    needle = text.encode()
    deadline = time.monotonic() + timeout
    while True:
        # Read before checking liveness, so a line written just before exiting counts.
        try:
            with child.log_path.open("rb") as log:
                log.seek(child.log_start)
                if needle in log.read():
                    return
        except FileNotFoundError:
            pass
        _check_alive(child, waiting_for)
        if time.monotonic() >= deadline:
            raise _failure(child, f"timed out after {timeout:.1f}s {waiting_for}")
        time.sleep(_POLL_INTERVAL)


def _signal_group(child: Child, sig: int) -> None:
    # returncode stays None until the leader is reaped, so its pid (= pgid) is still ours.
    if child.popen.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)


def stop(child: Child, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
    """Stop the child with ``sig``, then SIGKILL its group after ``timeout``; reap it.

    Idempotent: stopping a child that has already exited just returns its status.
    A paused child is continued after ``sig`` is sent, so it can act on it.

    Args:
        child: The child to stop.
        timeout: Seconds to wait after ``sig`` before SIGKILL.
        sig: The first signal (SIGTERM by default; SIGQUIT is nginx's graceful stop).

    Returns:
        The exit status (negative: killed by that signal).
    """
    if child.popen.poll() is not None:
        return child.popen.returncode
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, sig)
    _signal_group(child, signal.SIGCONT)
    try:
        return child.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return kill(child)


def kill(child: Child) -> int | None:
    """SIGKILL the child's process group and reap the child.

    Args:
        child: The child to kill.

    Returns:
        The exit status (``-9`` unless it had already exited).
    """
    _signal_group(child, signal.SIGKILL)
    return child.popen.wait()


def pause(child: Child) -> None:
    """Freeze the child's process group with SIGSTOP (it keeps its sockets open).

    Args:
        child: The child to pause.
    """
    _signal_group(child, signal.SIGSTOP)


def resume(child: Child) -> None:
    """Continue a paused child's process group with SIGCONT.

    Args:
        child: The child to resume.
    """
    _signal_group(child, signal.SIGCONT)
