"""The load-generator process: uvloop, ``ChatClient`` connections, commands from a pipe.

``main(conn)`` is the process entry (``multiprocessing`` target). It ignores
SIGINT (the coordinator decides when workers stop, and stops them by pid),
raises its open-file limit, and serves commands (``clusterchat_bench.commands``)
one at a time: each is answered by exactly one result, possibly preceded by
``Progress`` messages. The worker ends on ``Exit`` or when the pipe closes.
"""

import asyncio
import signal
import time
import traceback
from multiprocessing.connection import Connection

from clusterchat.client import ChatClientError
from clusterchat_bench.commands import (
    Close,
    Command,
    Done,
    Exit,
    Failed,
    Login,
    MakeGroups,
    MakePairs,
    Offline,
    Progress,
    Register,
    Result,
    Step,
)
from clusterchat_bench.limits import raise_open_files
from clusterchat_bench.offline_probe import run_offline
from clusterchat_bench.pool import Pool
from clusterchat_bench.sender import run_step

__all__ = ["main"]

_PROGRESS_EVERY = 0.25
_GROUP_SETUP_CONCURRENCY = 50


def main(conn: Connection) -> None:
    """Serve commands from ``conn`` until ``Exit`` or until the coordinator goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_open_files()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(_serve(conn))
    else:
        uvloop.run(_serve(conn))


class _Worker:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._pools: dict[str, Pool] = {}
        self._last_progress = 0.0

    def progress(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last_progress >= _PROGRESS_EVERY:
            self._last_progress = now
            self._conn.send(Progress(done))

    def pool(self, name: str) -> Pool:
        return self._pools.setdefault(name, Pool())

    async def handle(self, command: Command) -> Result:
        self._last_progress = time.monotonic()
        if isinstance(command, Register):
            return await self.pool(command.pool).register(
                command.users, command.password, command.concurrency, self.progress
            )
        if isinstance(command, Login):
            return await self.pool(command.pool).login(
                command.password, command.concurrency, self.progress
            )
        if isinstance(command, MakePairs):
            return self.pool(command.pool).pair()
        if isinstance(command, MakeGroups):
            return await self.pool(command.pool).group(
                command.size, command.prefix, _GROUP_SETUP_CONCURRENCY
            )
        if isinstance(command, Step):
            return await run_step(
                self.pool(command.pool),
                command.step,
                command.rate,
                command.count,
                command.drain,
                self.progress,
            )
        if isinstance(command, Offline):
            return await run_offline(command)
        if isinstance(command, Close):
            pool = self._pools.pop(command.pool, None)
            if pool is not None:
                await pool.close()
            return Done()
        raise TypeError(f"unknown command {command!r}")

    async def close_all(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()


async def _serve(conn: Connection) -> None:
    worker = _Worker(conn)
    try:
        while True:
            try:
                command: Command = await asyncio.to_thread(conn.recv)
            except EOFError:
                return
            if isinstance(command, Exit):
                return
            try:
                result = await worker.handle(command)
            except ChatClientError as exc:
                # A refusal is the cluster's answer (its limits, say), not a bench
                # failure: its message, without the bench's stack.
                result = Failed(f"the cluster refused a request: {exc}")
            except Exception:
                result = Failed(traceback.format_exc())
            conn.send(result)
    finally:
        await worker.close_all()
