"""What the page size costs the log's appends in SQLite, with nothing else around.

Run with ``.venv/bin/python benchmarks/sqlite_page_size.py``. For each page
size it makes a database with the log's tables (``migrate.upgrade`` after
``PRAGMA page_size``) and 1,000 users, then appends 3,000 transactions of 20
one-to-one messages between random users as the log writer does (one
multi-row INSERT into ``messages``, one into ``inbox``, COMMIT, a PASSIVE
checkpoint every 50 ms), in rounds that alternate the page sizes (the
databases grow from round to round). It prints the CPU µs per message.
docs/performance.md quotes it; no test asserts on it.
"""

import asyncio
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from log_append import BODY, create_database

__all__ = ["main"]

PAGE_SIZES = (1024, 2048, 4096, 8192)
USERS = 1000
BATCH = 20


def _make(path: Path, page_size: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute("VACUUM")  # writes the empty file with that page size
    asyncio.run(create_database(f"sqlite:///{path}", USERS))


def _messages(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    return f"INSERT INTO messages (conversation, mid, sender_id, cid, time, body) VALUES {values}"


def _append(path: Path, tag: str, transactions: int = 3000) -> float:
    """CPU µs per message of ``transactions`` appends of ``BATCH`` messages."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("synchronous=NORMAL", "foreign_keys=ON", "wal_autocheckpoint=0"):
        conn.execute(f"PRAGMA {pragma}")
    ends = dict(conn.execute("SELECT user_id, max(pos) FROM inbox GROUP BY user_id").fetchall())
    messages = _messages(BATCH)
    inbox = "INSERT INTO inbox (user_id, pos, message_id) VALUES " + ", ".join(
        ["(?, ?, ?)"] * BATCH
    )
    rng = random.Random(tag)
    checkpointed = time.monotonic()
    number = 0
    started = time.thread_time()
    for _ in range(transactions):
        conn.execute("BEGIN IMMEDIATE")
        senders = [1 + rng.randrange(USERS) for _ in range(BATCH)]
        recipients = [1 + sender % USERS for sender in senders]
        values: list[object] = []
        for sender, recipient in zip(senders, recipients, strict=True):
            number += 1
            values += [f"u:{sender}:{recipient}", f"{tag}-{number}", sender, None, "t", BODY]
        last = conn.execute(messages, values).lastrowid
        assert last is not None
        entries: list[int] = []
        for offset, recipient in enumerate(recipients):
            ends[recipient] = ends.get(recipient, 0) + 1
            entries += [recipient, ends[recipient], last - BATCH + 1 + offset]
        conn.execute(inbox, entries)
        conn.execute("COMMIT")
        if time.monotonic() - checkpointed > 0.05:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            checkpointed = time.monotonic()
    cpu = time.thread_time() - started
    conn.close()
    return cpu / (transactions * BATCH) * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = {size: Path(tmp) / f"log-{size}.db" for size in PAGE_SIZES}
        for size, path in paths.items():
            _make(path, size)
        for round_ in (1, 2, 3):
            figures = ", ".join(
                f"{size} B {_append(path, f'r{round_}'):.1f}" for size, path in paths.items()
            )
            print(f"round {round_}: CPU µs per message by page size: {figures}")


if __name__ == "__main__":
    main()
