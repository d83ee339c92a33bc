"""SqliteWriter: every write transaction of one node on SQLite, in one thread of its own.

SQLite has one writer at a time per database file. Run through the async
driver, a transaction of several statements returns to the event loop after
each one, so it holds the file's write lock for as long as the busy node
takes to come back to it, and the other nodes wait in SQLite's busy handler,
which sleeps 1, 2, 5, 10... ms between tries. Measured with two nodes that
append the log: p99 above 400 ms at 5,000 msgs/s (docs/performance.md).

Here a write runs start to end in this writer's thread, without visiting the
event loop, so the lock is held only for the statements themselves. Writers of
several node processes queue on an advisory file lock (``flock`` on
``<db>.write-lock``), which wakes the next one as soon as the lock is
released, instead of letting them poll in the busy handler. ``BEGIN
IMMEDIATE`` takes SQLite's write lock first, so a transaction that reads
before it writes never has to upgrade. The thread keeps its one connection
open between transactions instead of checking one out of a pool for each.

The WAL is checkpointed in a thread of its own, on a connection of its own (a
PASSIVE checkpoint at most every ``CHECKPOINT_INTERVAL``, asked for after a
write released the file lock): SQLite's automatic checkpoint runs inside
COMMIT, so the other nodes waited for it on the lock; run by the writer
thread after the write, its ``fdatasync`` held up this node's next
transaction (p99 at 5,000 msgs/s: 36-37 ms there, 16 ms here, two rounds
each; docs/performance.md).

SQLite starts the WAL file over only when a write transaction begins while
every frame in it has been checkpointed and no reader still reads from it.
With the checkpoint in a thread of its own that moment never came while
transactions followed each other: the WAL grew without end (4.4 MB/s at
7,500 one-to-one messages/s, 222-315 MB after 40-60 s bench steps; 60 MB in
a fraction of a second of back-to-back transactions,
``tests/unit/store/test_sqlite_writer.py``).
So after a commit that left the WAL file larger than ``WAL_LIMIT``, the
writer thread, still holding the file lock, checkpoints the rest itself
(``RESTART``: whatever the checkpoint thread has not copied yet, and the
file synced), without waiting for anyone: a busy timeout of 0; while the
checkpoint thread runs, after its next commit; when a reader was in the
way, ``RESTART_RETRY`` later (a try may sync the file). Its next
transaction then starts the WAL over, and ``journal_size_limit`` cuts the
file back to ``WAL_LIMIT`` (benchmarks/RESULTS.md, "System calls per
message, and the WAL's size").
"""

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event

__all__ = ["SqliteWriter"]

log = logging.getLogger("clusterchat.store")

T = TypeVar("T")

#: Compiled statements the writer's connection keeps (sqlite3's default: 128).
#: The log's multi-row statements write 2^k rows each (``log_sql._statements``),
#: so there are at most 29 of them (up to 256 rows for ``messages``, 512 for
#: ``inbox`` and ``cursors``): 1.3 MB compiled, all of them. (When each batch
#: size had a text of its own, 128 cached 1,000-row statements grew a node
#: flooded with 100,000 messages 34-63 MiB instead of 30-32.)
_CACHED_STATEMENTS = 40
#: Seconds between two checkpoints of one writer (docstring above).
CHECKPOINT_INTERVAL = 0.05
#: Bytes of WAL past which the writer starts the WAL over (docstring above).
#: Each time costs the writer one checkpoint's ``fdatasync`` calls, 3-26 ms
#: here: the WAL takes 24 MB a second at 7,500 one-to-one msgs/s (every 2.8 s),
#: 55 MB at 20,000/s (every 1.2 s; a larger limit measured no better in the
#: cluster: benchmarks/RESULTS.md).
WAL_LIMIT = 64 * 2**20
#: Seconds between two tries to start the WAL over while readers are in the
#: way (a try may sync the database file: at most one such stall a second).
RESTART_RETRY = 1.0


class SqliteWriter:
    """Runs write transactions on one SQLite file from a dedicated thread.

    Args:
        url: A synchronous SQLite URL (``sqlite:///path``).
        path: The database file (the lock file sits beside it).
        on_connect: Called with each new DB-API connection (pragmas).
    """

    def __init__(self, url: str, path: str, on_connect: Callable[[Any, Any], None]) -> None:
        self._engine: Engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "cached_statements": _CACHED_STATEMENTS},
            pool_size=1,
            max_overflow=0,
        )
        event.listen(self._engine, "connect", on_connect)
        event.listen(self._engine, "connect", _writer_pragmas)
        self._path = path
        self._wal_path = f"{path}-wal"
        self._restart_failed = -RESTART_RETRY
        self._checkpointed = 0.0
        self._checkpointing = threading.Lock()
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._lock_path = f"{path}.write-lock"
        self._lock_fd: int | None = None
        self._conn: Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._checkpointer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sqlite-checkpoint"
        )

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(conn)`` in one write transaction; return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.transaction, work)

    def transaction(self, work: Callable[[Connection], T]) -> T:
        """``run``, in the calling thread (the log writer process's one thread)."""
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            if self._conn is None:
                self._conn = self._engine.connect()
            conn = self._conn
            # BEGIN and COMMIT on the DB-API connection itself: through
            # exec_driver_sql, BEGIN's execution context and result cost the
            # log writer 5% of its time at 7,500 msgs/s (docs/performance.md).
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None  # a connection checked out and not invalidated
            try:
                dbapi.execute("BEGIN IMMEDIATE")
                result = work(conn)
                if conn.in_transaction():
                    conn.commit()  # work used SQLAlchemy, which began its own (a no-op)
                else:
                    dbapi.commit()
            except BaseException:
                self._abandon(conn, dbapi)
                raise
            self._start_wal_over(dbapi)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self._checkpoint()
        return result

    def _start_wal_over(self, dbapi: Any) -> None:
        """Past ``WAL_LIMIT``: checkpoint the WAL whole, so that the next
        transaction starts it over (module docstring). Never waits: while the
        checkpoint thread runs, after the next commit; when readers were in
        the way, ``RESTART_RETRY`` later."""
        try:
            if os.stat(self._wal_path).st_size <= WAL_LIMIT:
                return
        except OSError:
            return
        now = time.monotonic()
        if now - self._restart_failed < RESTART_RETRY:
            return
        if not self._checkpointing.acquire(blocking=False):
            return  # the checkpoint thread copies frames now
        (timeout,) = dbapi.execute("PRAGMA busy_timeout").fetchone()
        dbapi.execute("PRAGMA busy_timeout=0")
        busy = True
        try:
            (busy, _frames, _copied) = dbapi.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as exc:
            log.warning(
                "checkpointing the WAL failed (%s); tried again in %.0f s", exc, RESTART_RETRY
            )
        finally:
            dbapi.execute(f"PRAGMA busy_timeout={int(timeout)}")
            self._checkpointing.release()
        if busy:
            self._restart_failed = now

    def _abandon(self, conn: Connection, dbapi: Any) -> None:
        """Roll a failed transaction back; a connection that cannot is closed
        (the next transaction opens a new one)."""
        try:
            conn.rollback()  # SQLAlchemy's view of it, if work used SQLAlchemy
            dbapi.rollback()  # the transaction itself (nothing when none is open)
        except Exception as exc:
            log.warning("rolling back a failed write failed (%s); reconnecting", exc)
            self._conn = None
            conn.invalidate()

    def _checkpoint(self) -> None:
        now = time.monotonic()
        if now - self._checkpointed < CHECKPOINT_INTERVAL:
            return
        if not self._checkpointing.acquire(blocking=False):
            return  # the previous one still runs
        self._checkpointed = now
        self._checkpointer.submit(self._run_checkpoint)

    def _run_checkpoint(self) -> None:
        """In the checkpoint thread. A failure is left to the next one (PASSIVE
        copies what it can; the WAL stays valid either way)."""
        try:
            if self._checkpoint_conn is None:
                self._checkpoint_conn = sqlite3.connect(self._path, timeout=10)
            self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("checkpointing the WAL failed (%s); the next one retries", exc)
        finally:
            self._checkpointing.release()

    async def close(self) -> None:
        """Wait for the running write and checkpoint, then release the threads,
        the connections and the lock."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._release)
        self._thread.shutdown(wait=False)  # idle now: its last job just ended
        await loop.run_in_executor(self._checkpointer, self._close_checkpoint_connection)
        self._checkpointer.shutdown(wait=False)

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _close_checkpoint_connection(self) -> None:
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None


def _writer_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """No automatic checkpoint (the checkpoint thread's), and the WAL cut back
    to ``WAL_LIMIT`` when started over (module docstring)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    cursor.close()
