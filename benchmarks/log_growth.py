"""Does appending to the SQLite log get slower as the users' logs grow?

Run with ``.venv/bin/python benchmarks/log_growth.py [--users 1000] [--batch 40]``.
It builds a log in a temporary SQLite file, one-to-one messages between
random users, and after each stage of growth (every user's log 10, 300,
3,000 entries long on average) times, on one connection with the log
writer's settings:

* ``last_positions`` for ``--batch`` random users (what every append asks
  first, and every sweep asks for all of a node's users);
* ``log_sql.append`` of ``--batch`` one-to-one messages in one transaction.

It prints the median wall time of 200 rounds of each, in µs. Both should
stay flat as the logs grow (docs/performance.md). No test asserts on the
times; tests/contract/test_store.py asserts the work of ``last_positions``
(its reads per user) does not grow with the logs.
"""

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, event, insert

from clusterchat.store import log_sql
from clusterchat.store.base import NewMessage
from clusterchat.store.migrate import upgrade
from clusterchat.store.schema import users
from clusterchat.store.sql import sqlite_pragmas

__all__ = ["main"]

BODY = b'{"id":1,"mid":"18c-abc-1","msg":"hello","msgid":6,"name":"u1","time":"t"}'
ROUNDS = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=40)
    args = parser.parse_args()
    rng = random.Random(7)
    count = 0

    def messages(n: int) -> list[NewMessage]:
        nonlocal count
        batch = []
        for _ in range(n):
            count += 1
            a, b = rng.randrange(1, args.users + 1), rng.randrange(1, args.users + 1)
            conversation = f"u:{min(a, b)}:{max(a, b)}"
            batch.append(NewMessage(f"m{count}", a, conversation, (b,), "t", BODY))
        return batch

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'log.db'}"
        asyncio.run(upgrade(url))
        engine = create_engine(url)
        event.listen(engine, "connect", sqlite_pragmas)
        with engine.begin() as conn:
            conn.execute(
                insert(users),
                [
                    {"name": f"u{i}", "name_key": f"u{i}", "password_hash": "h"}
                    for i in range(args.users)
                ],
            )
        with engine.connect() as conn:
            grown = 0
            for average in (10, 300, 3000):
                while grown < average * args.users:
                    with conn.begin():
                        log_sql.append(conn, messages(2000), lock_timeout=10)
                    grown += 2000
                ends = []
                appends = []
                for _ in range(ROUNDS):
                    wanted = rng.sample(range(1, args.users + 1), args.batch)
                    with conn.begin():
                        started = time.perf_counter()
                        log_sql.last_positions(conn, wanted)
                        ends.append(time.perf_counter() - started)
                    batch = messages(args.batch)
                    started = time.perf_counter()
                    with conn.begin():
                        log_sql.append(conn, batch, lock_timeout=10)
                    appends.append(time.perf_counter() - started)
                grown += ROUNDS * args.batch
                ends_us = statistics.median(ends) * 1e6
                append_us = statistics.median(appends) * 1e6
                print(
                    f"logs of {average:>5,} entries on average: "
                    f"last_positions of {args.batch} users {ends_us:8.0f} µs, "
                    f"append of {args.batch} messages {append_us:8.0f} µs"
                )
        engine.dispose()


if __name__ == "__main__":
    main()
