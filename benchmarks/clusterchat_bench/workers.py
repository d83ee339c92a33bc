"""WorkerPool: the load-generator processes, seen from the coordinator.

Each worker is a ``multiprocessing`` process (spawn start method: a fresh
interpreter, no inherited event loop or threads) running
``clusterchat_bench.loadgen.main`` with one end of a pipe. ``call`` sends one
command per worker and waits, with a deadline, for one result from each,
passing their ``Progress`` on. ``close`` asks each worker to exit, then stops
the ones still running by pid (SIGTERM, then SIGKILL).
"""

import contextlib
import multiprocessing
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TypeVar

from clusterchat_bench import loadgen
from clusterchat_bench.commands import Command, Exit, Failed, Progress, Result

__all__ = ["WorkerError", "WorkerPool"]

_R = TypeVar("_R", bound=Result)
_POLL = 0.1
_EXIT_GRACE = 5.0


class WorkerError(RuntimeError):
    """A worker failed a command, died, or did not answer in time."""


class WorkerPool:
    """``count`` load-generator processes, started at once."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []
        self._conns: list[Connection] = []
        try:
            for number in range(count):
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=loadgen.main, args=(theirs,), name=f"bench-loadgen-{number}"
                )
                process.start()
                theirs.close()
                self._processes.append(process)
                self._conns.append(ours)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._processes)

    @property
    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [p.pid for p in self._processes if p.pid is not None]

    def call(
        self,
        commands: Sequence[Command | None],
        result_type: type[_R],
        *,
        timeout: float,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[_R]:
        """Send ``commands[i]`` to worker i (None: leave it idle); return their results.

        Args:
            commands: One command (or None) per worker.
            result_type: The result each command answers with.
            timeout: Seconds to wait for all of them.
            on_progress: Called with the sum of the workers' progress counts.

        Raises:
            WorkerError: A worker failed, died, answered otherwise, or was too slow.
        """
        if len(commands) != len(self._conns):
            raise ValueError(f"{len(commands)} commands for {len(self._conns)} workers")
        waiting: dict[Connection, int] = {}
        for index, (conn, command) in enumerate(zip(self._conns, commands, strict=True)):
            if command is not None:
                conn.send(command)
                waiting[conn] = index
        results: dict[int, _R] = {}
        progress = dict.fromkeys(waiting.values(), 0)
        deadline = time.monotonic() + timeout
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = sorted(waiting.values())
                raise WorkerError(f"workers {names} did not answer within {timeout:.0f}s")
            for ready in wait(list(waiting), timeout=min(_POLL, remaining)):
                assert isinstance(ready, Connection)
                conn = ready
                index = waiting[conn]
                try:
                    message = conn.recv()
                except EOFError:
                    raise WorkerError(f"worker {index} died") from None
                if isinstance(message, Progress):
                    progress[index] = message.done
                    if on_progress is not None:
                        on_progress(sum(progress.values()))
                    continue
                del waiting[conn]
                if isinstance(message, Failed):
                    raise WorkerError(f"worker {index} failed:\n{message.error}")
                if not isinstance(message, result_type):
                    raise WorkerError(f"worker {index} answered {message!r}")
                results[index] = message
            for conn, index in waiting.items():
                if not self._processes[index].is_alive() and not conn.poll():
                    raise WorkerError(
                        f"worker {index} exited with {self._processes[index].exitcode}"
                    )
        return [results[i] for i in sorted(results)]

    def close(self) -> None:
        """Ask every worker to exit; stop by pid those that do not (SIGTERM, then SIGKILL)."""
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(Exit())
        deadline = time.monotonic() + _EXIT_GRACE
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(_EXIT_GRACE)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in self._conns:
            conn.close()
        self._processes.clear()
        self._conns.clear()
