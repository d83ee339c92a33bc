"""What the page size costs the log's appends in SQLite, with nothing else around.

Run with ``.venv/bin/python benchmarks/sqlite_page_size.py``. For each page
size it makes a database with the log's tables (``migrate.upgrade`` after
``PRAGMA page_size``) and 1,000 users, then appends 3,000 transactions of 20
one-to-one messages between random users as the log writer does (one
multi-row INSERT into ``messages``, one into ``inbox``, COMMIT, a PASSIVE
checkpoint every 50 ms: ``sqlite_inbox_merge.append``, entries written in
place), in rounds that alternate the page sizes (the databases grow from
round to round). It prints the CPU µs per message.
docs/performance.md quotes it; no test asserts on it.
"""

import asyncio
import sqlite3
import tempfile
from pathlib import Path

from log_append import create_database
from sqlite_inbox_merge import append

__all__ = ["main"]

PAGE_SIZES = (1024, 2048, 4096, 8192)
USERS = 1000


def _make(path: Path, page_size: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute("VACUUM")  # writes the empty file with that page size
    asyncio.run(create_database(f"sqlite:///{path}", USERS))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = {size: Path(tmp) / f"log-{size}.db" for size in PAGE_SIZES}
        for size, path in paths.items():
            _make(path, size)
        for round_ in (1, 2, 3):
            figures = ", ".join(
                f"{size} B {append(path, f'r{round_}', USERS, None):.1f}"
                for size, path in paths.items()
            )
            print(f"round {round_}: CPU µs per message by page size: {figures}")


if __name__ == "__main__":
    main()
