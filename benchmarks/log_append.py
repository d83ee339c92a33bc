"""How fast the SQLite message log appends, with no node around it.

Run with ``.venv/bin/python benchmarks/log_append.py [--batch 50] [--seconds 5]``.
It creates a fresh database with 2,000 users in a temporary directory, then
appends random one-to-one messages in batches through ``SqlStore.append`` as
fast as it can: once from one process, then from two processes into the same
file at once (as two nodes of one machine do). It prints messages per second
for each, and each process's CPU time per append in its writer thread and in
its event loop (the hand-over of the batch and of the result). Numbers are
for comparing versions on one machine (docs/performance.md quotes them); no
test asserts on them.
"""

import argparse
import asyncio
import multiprocessing
import random
import tempfile
import threading
import time
from pathlib import Path

from clusterchat.settings import Settings
from clusterchat.store.base import NewMessage
from clusterchat.store.migrate import upgrade
from clusterchat.store.sql import SqlStore

__all__ = ["create_database", "main"]

SETTINGS = Settings()
USERS = 2000
BODY = (
    b'{"id":1,"mid":"18c-abc-1","msg":"hello there 123","msgid":6,'
    b'"name":"u1","time":"2026-12-01 10:00:00"}'
)


async def create_database(url: str, users: int = USERS) -> None:
    """A new database at ``url`` with users ``u0``, ``u1``... (ids 1, 2...)."""
    await upgrade(url)
    store = SqlStore(url, pool_size=SETTINGS.db_pool_size, lock_timeout=SETTINGS.db_lock_timeout)
    for index in range(users):
        await store.create_user(f"u{index}", "h", name_key=f"u{index}")
    await store.close()


def _writer_cpu() -> float:
    """CPU seconds of this process's SQLite writer thread so far (0 before it starts)."""
    for thread in threading.enumerate():
        if thread.name.startswith("sqlite-writer") and thread.ident is not None:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return 0.0


async def _append(url: str, tag: str, batch: int, seconds: float) -> tuple[float, float, float]:
    """Messages appended per second, and the CPU µs per append of the writer
    thread and of the event loop's side of it (handing the batch over and back)."""
    store = SqlStore(url, pool_size=SETTINGS.db_pool_size, lock_timeout=SETTINGS.db_lock_timeout)
    rng = random.Random(tag)
    sent = appends = 0
    loop_cpu = 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        messages = []
        for index in range(batch):
            a = rng.randrange(USERS)
            b = (a + 1) % USERS
            messages.append(
                NewMessage(
                    f"{tag}-{sent + index}",
                    1 + a,
                    f"u:{min(a, b)}:{max(a, b)}",
                    (1 + b,),
                    "t",
                    BODY,
                )
            )
        before = time.thread_time()
        await store.append(messages)
        loop_cpu += time.thread_time() - before
        sent += batch
        appends += 1
    elapsed = time.perf_counter() - started
    writer_cpu = _writer_cpu()
    await store.close()
    return sent / elapsed, writer_cpu / appends * 1e6, loop_cpu / appends * 1e6


def _worker(url: str, tag: str, batch: int, seconds: float) -> tuple[float, float, float]:
    return asyncio.run(_append(url, tag, batch, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50, help="messages per append")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            url = f"sqlite:///{Path(tmp) / f'log{processes}.db'}"
            asyncio.run(create_database(url))
            context = multiprocessing.get_context("spawn")
            with context.Pool(processes) as pool:
                rates = pool.starmap(
                    _worker, [(url, f"p{i}", args.batch, args.seconds) for i in range(processes)]
                )
            each = ", ".join(f"{rate:,.0f}" for rate, _, _ in rates)
            cpu = ", ".join(f"{writer:.0f}+{loop:.0f}" for _, writer, loop in rates)
            print(
                f"{processes} process(es), batches of {args.batch}: "
                f"{sum(rate for rate, _, _ in rates):,.0f} msgs/s in all ({each}); "
                f"CPU µs per append, writer thread + event loop: {cpu}"
            )


if __name__ == "__main__":
    main()
