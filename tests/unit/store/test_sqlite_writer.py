"""``SqliteWriter``: the WAL stays bounded while transactions follow each other without a pause.

SQLite starts its WAL file over only when a write transaction begins while
every frame in it has been checkpointed. The writer's checkpoints run in a
thread of their own (sqlite_writer.py), so under a steady stream of
transactions that moment never came: the log writer's WAL grew by 4.4 MB/s
at 7,500 one-to-one messages/s (222-315 MB after 40-60 s bench steps), and
here by 60 MB in a fraction of a second of back-to-back transactions,
without end.
"""

import asyncio
import random
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection

from clusterchat.store import sqlite_writer
from clusterchat.store.sql import SQLITE_FILE_PRAGMAS, sqlite_pragmas
from clusterchat.store.sqlite_writer import SqliteWriter

#: Rows each transaction writes at random places (each dirties pages of its own).
_ROWS = 10
_KEYS = 200_000
#: A smaller limit than the writer's, so that eight WALs of it take a second here.
_LIMIT = 4 * 2**20


def _database(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        for pragma in SQLITE_FILE_PRAGMAS:
            conn.execute(pragma)
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")


def _largest_wal(path: Path) -> int:
    """Append frames for eight WALs of ``_LIMIT`` in back-to-back transactions of
    about ``_ROWS`` pages each; the largest the WAL file was after a commit."""
    writer = SqliteWriter(f"sqlite:///{path}", str(path), sqlite_pragmas)
    rng = random.Random(1)
    blob = b"x" * 100

    def work(conn: Connection) -> None:
        cursor = conn.connection.cursor()
        rows = [(rng.randrange(_KEYS), blob) for _ in range(_ROWS)]
        cursor.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)", rows)
        cursor.close()

    wal = Path(f"{path}-wal")
    largest = 0
    try:
        for _ in range(8 * _LIMIT // (_ROWS * 2048)):
            writer.transaction(work)
            largest = max(largest, wal.stat().st_size)
    finally:
        asyncio.run(writer.close())
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return largest


def test_the_wal_stays_bounded_under_back_to_back_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writer, "WAL_LIMIT", _LIMIT)
    path = tmp_path / "chat.db"
    _database(path)
    largest = _largest_wal(path)
    assert largest <= 2 * _LIMIT, f"the WAL grew to {largest:,} bytes (limit {_LIMIT:,})"


def test_the_wal_is_started_over_while_a_reader_reads_beside_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader in the way makes a try fail; the writer tries again later (here
    after 10 ms instead of a second, for a short test) and gets there."""
    monkeypatch.setattr(sqlite_writer, "WAL_LIMIT", _LIMIT)
    monkeypatch.setattr(sqlite_writer, "RESTART_RETRY", 0.01)
    path = tmp_path / "chat.db"
    _database(path)
    stop = threading.Event()
    reads = 0

    def read() -> None:  # as a node reads the log: a short read every millisecond
        nonlocal reads
        with sqlite3.connect(path) as reader:
            while not stop.wait(0.001):
                reader.execute("SELECT count(*) FROM t WHERE k < 100").fetchone()
                reads += 1

    thread = threading.Thread(target=read)
    thread.start()
    try:
        largest = _largest_wal(path)
    finally:
        stop.set()
        thread.join()
    assert reads > 0
    assert largest <= 4 * _LIMIT, f"the WAL grew to {largest:,} bytes (limit {_LIMIT:,})"
