"""What a recipient's log entry costs written in place, or appended and merged later.

Run with ``.venv/bin/python benchmarks/sqlite_inbox_merge.py [--users 1000]``.
SQLite alone, the log's tables (``migrate.upgrade``, 2,048-byte pages) and
``--users`` users. Each layout appends 3,000 transactions of 20 one-to-one
messages between random users, a PASSIVE checkpoint every 50 ms, as the log
writer does:

- **in place**: each transaction INSERTs its messages and their entries into
  ``inbox``, which is keyed by (user, position): every entry goes to its
  recipient's page, a different page for nearly every message;
- **merged**: each transaction INSERTs its messages and their entries into a
  rowid table at its end (a few pages per transaction); every ``--merge-ms``
  one transaction moves what came since into ``inbox`` (``INSERT ... SELECT``,
  then ``DELETE``), so that a recipient's page is written once per merge,
  whatever the number of its entries since.

Rounds alternate the layouts. It prints the CPU µs per message (user and
kernel, the whole process). A probe for docs/performance.md; no test
asserts on it.
"""

import argparse
import asyncio
import random
import resource
import sqlite3
import tempfile
import time
from pathlib import Path

from log_append import BODY, create_database

__all__ = ["append", "main"]

BATCH = 20


def _make(path: Path, users: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA page_size=2048")
        conn.execute("VACUUM")
    asyncio.run(create_database(f"sqlite:///{path}", users))
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE recent (user_id INTEGER NOT NULL, pos INTEGER NOT NULL,"
            " message_id INTEGER NOT NULL)"
        )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def append(path: Path, tag: str, users: int, merge_ms: float | None) -> float:
    """CPU µs per message; ``merge_ms`` None writes ``inbox`` in place."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("synchronous=NORMAL", "foreign_keys=ON", "wal_autocheckpoint=0"):
        conn.execute(f"PRAGMA {pragma}")
    ends = dict(conn.execute("SELECT user_id, max(pos) FROM inbox GROUP BY user_id").fetchall())
    values_m = ", ".join(["(?, ?, ?, ?, ?, ?)"] * BATCH)
    messages = (
        f"INSERT INTO messages (conversation, mid, sender_id, cid, time, body) VALUES {values_m}"
    )
    table = "inbox" if merge_ms is None else "recent"
    entries_sql = f"INSERT INTO {table} (user_id, pos, message_id) VALUES " + ", ".join(
        ["(?, ?, ?)"] * BATCH
    )
    rng = random.Random(tag)
    checkpointed = merged = time.monotonic()
    number = 0
    transactions = 3000
    started = _cpu()
    for _ in range(transactions):
        conn.execute("BEGIN IMMEDIATE")
        senders = [1 + rng.randrange(users) for _ in range(BATCH)]
        recipients = [1 + sender % users for sender in senders]
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
        conn.execute(entries_sql, entries)
        conn.execute("COMMIT")
        now = time.monotonic()
        if merge_ms is not None and now - merged > merge_ms / 1000:
            _merge(conn)
            merged = now
        if now - checkpointed > 0.05:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            checkpointed = now
    if merge_ms is not None:
        _merge(conn)
    cpu = _cpu() - started
    conn.close()
    return cpu / (transactions * BATCH) * 1e6


def _merge(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    last = conn.execute("SELECT max(rowid) FROM recent").fetchone()[0]
    if last is not None:
        conn.execute(
            "INSERT INTO inbox (user_id, pos, message_id) SELECT user_id, pos, message_id"
            " FROM recent WHERE rowid <= ? ORDER BY user_id, pos",
            (last,),
        )
        conn.execute("DELETE FROM recent WHERE rowid <= ?", (last,))
    conn.execute("COMMIT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--merge-ms", type=float, action="append")
    args = parser.parse_args()
    layouts: list[float | None] = [None, *(args.merge_ms or [100.0, 500.0])]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {layout: Path(tmp) / f"log-{layout}.db" for layout in layouts}
        for path in paths.values():
            _make(path, args.users)
        for round_ in range(1, args.rounds + 1):
            figures = ", ".join(
                ("in place" if layout is None else f"merged every {layout:g} ms")
                + f" {append(path, f'r{round_}', args.users, layout):.1f}"
                for layout, path in paths.items()
            )
            print(f"round {round_}, {args.users} users: CPU µs per message: {figures}", flush=True)


if __name__ == "__main__":
    main()
