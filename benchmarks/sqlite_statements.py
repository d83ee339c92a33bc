"""What compiling its multi-row INSERTs costs SQLite, with nothing else around.

Run with ``.venv/bin/python benchmarks/sqlite_statements.py``. It inserts
3,000 batches of 5 to 40 rows of the log's ``messages`` columns into a fresh
file (WAL, 2,048-byte pages, a connection caching 8 compiled statements, as
the log writer's did) in three ways, twice each: one statement per batch
("batch": a text per batch size, so the cache misses), ``executemany`` of a
one-row statement ("many"), and statements of 2^k rows ("2^k": at most six
texts, always cached). It prints the CPU µs per row of each.
docs/performance.md quotes it; no test asserts on it.
"""

import random
import sqlite3
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

BODY = b'{"id":1,"mid":"18c-abc-1","msg":"hello there 123","msgid":6,"name":"u1"}'
COLUMNS = "conversation, mid, sender_id, cid, time, body"


def _insert(rows: int) -> str:
    return f"INSERT INTO m ({COLUMNS}) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)


def _run(mode: str, folder: Path, batches: int = 3000) -> float:
    """CPU µs per row inserted the ``mode`` way."""
    folder.mkdir()
    conn = sqlite3.connect(folder / "log.db", isolation_level=None, cached_statements=8)
    for pragma in ("page_size=2048", "journal_mode=WAL", "synchronous=NORMAL"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute(f"CREATE TABLE m (id INTEGER PRIMARY KEY, {COLUMNS})")
    rng = random.Random(1)
    number = 0
    cpu = 0.0
    rows = 0
    for _ in range(batches):
        batch = []
        for _ in range(rng.randint(5, 40)):
            number += 1
            batch.append((f"u:{number % 1000}", f"m{number}", number % 1000, None, "t", BODY))
        conn.execute("BEGIN")
        started = time.thread_time()
        if mode == "batch":
            conn.execute(_insert(len(batch)), [v for row in batch for v in row])
        elif mode == "many":
            conn.executemany(_insert(1), batch)
        else:
            start = 0
            while start < len(batch):
                count = 1 << ((len(batch) - start).bit_length() - 1)
                chunk = batch[start : start + count]
                conn.execute(_insert(count), [v for row in chunk for v in row])
                start += count
        cpu += time.thread_time() - started
        rows += len(batch)
        conn.execute("COMMIT")
    conn.close()
    return cpu / rows * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in (1, 2):
            figures = ", ".join(
                f"{mode} {_run(mode, Path(tmp) / f'{index}-{round_}'):.2f}"
                for index, mode in enumerate(("batch", "many", "2^k"))
            )
            print(f"round {round_}: CPU µs per row: {figures}")


if __name__ == "__main__":
    main()
