"""The machine's log writer process under a steady load, with no node around it.

Run with ``.venv/bin/python benchmarks/log_writer_load.py [--rate 7500]
[--group-size 1] [--seconds 10] [--profile FILE]``. It creates a fresh
SQLite database with 1,000 users in a temporary directory and two client
processes, each holding a ``LogClient`` as a node does. Together they append
``--rate`` messages per second for ``--seconds`` seconds the way two nodes
of ``clusterchat bench`` do: each client sends what it accepted every
``Settings.append_linger`` seconds as one request (one-to-one messages
from a random user to the next one, or with ``--group-size N`` group
messages to the N - 1 users after the sender), and every
``Settings.cursor_interval`` seconds the classic cursors of the users it
delivered to. It prints the rate reached, the
writer process's CPU time per message (from /proc, over the steady part of
the run) and the time from sending a request to its answer (p50, p99).
``--profile FILE`` records the writer with py-spy over that steady part
(``--format raw``: collapsed stacks).

The figures are for comparing builds on one machine, alternating, in one
session (benchmarks/RESULTS.md); no test asserts on them.
"""

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clusterchat.cluster.log_writers import log_writer_pids
from clusterchat.settings import Settings
from clusterchat.store.base import NewMessage
from clusterchat.store.log_client import LogClient
from log_append import create_database

__all__ = ["main"]

SETTINGS = Settings()
USERS = 1000
CLIENTS = 2
BODY = (
    b'{"id":1,"mid":"18c-abc-1","msg":"hello there 123","msgid":6,'
    b'"name":"u1","time":"2026-12-01 10:00:00"}'
)
_TICKS = os.sysconf("SC_CLK_TCK")


async def _load(
    path: str, tag: int, rate: float, group_size: int, seconds: float
) -> tuple[int, list[float]]:
    """Append at ``rate`` messages/s for ``seconds``; the count sent and each
    request's seconds from sending to its answer."""
    client = LogClient(path, SETTINGS.db_lock_timeout)
    await client.connect()
    linger = SETTINGS.append_linger
    per_tick = rate * linger
    latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()
    delivered: dict[int, int] = {}
    numbers = itertools.count()
    rng = random.Random(tag)
    sent = 0
    owed = 0.0

    async def append(batch: list[NewMessage]) -> None:
        started = time.perf_counter()
        for appended in await client.append(batch):
            for user_id, pos in appended.positions:
                delivered[user_id] = max(pos, delivered.get(user_id, 0))
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    next_cursors = started + SETTINGS.cursor_interval
    while (now := time.perf_counter()) - started < seconds:
        owed += per_tick
        batch = []
        while owed >= 1:
            owed -= 1
            number = next(numbers)
            sender = rng.randrange(tag, USERS, CLIENTS)  # each client its own users
            members = tuple(1 + (sender + k) % USERS for k in range(1, max(2, group_size)))
            conversation = f"g:{sender % 50}" if group_size > 1 else f"u:{sender}:{members[0]}"
            batch.append(
                NewMessage(f"{tag}-{number}", 1 + sender, conversation, members, "t", BODY)
            )
        if batch:
            sent += len(batch)
            task = asyncio.create_task(append(batch))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if now >= next_cursors and delivered:
            items = [(user_id, "", pos) for user_id, pos in delivered.items()]
            delivered.clear()
            task = asyncio.create_task(client.save_cursors(items))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_cursors = now + SETTINGS.cursor_interval
        await asyncio.sleep(max(0.0, started + (sent / rate) - time.perf_counter() + linger))
    if pending:
        await asyncio.wait(list(pending))
    await client.close()
    return sent, latencies


def _worker(
    path: str, tag: int, rate: float, group_size: int, seconds: float
) -> tuple[int, list[float]]:
    return asyncio.run(_load(path, tag, rate, group_size, seconds))


def _writer_pid(path: str) -> int:
    """The pid of the log writer serving ``path`` (started by the first client,
    which waits for it to fork into a session of its own)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in log_writer_pids(path):
            with contextlib.suppress(OSError):
                if os.getsid(pid) == pid:  # the detached writer, not its starter
                    return pid
        time.sleep(0.05)
    raise RuntimeError("no log writer runs for " + path)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=7500.0, help="messages/s in all")
    parser.add_argument("--group-size", type=int, default=1, help="1: one-to-one messages")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--profile", help="record the writer with py-spy into this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "log.db")
        asyncio.run(create_database(f"sqlite:///{path}", USERS))
        context = multiprocessing.get_context("spawn")
        with context.Pool(CLIENTS) as pool:
            work = pool.starmap_async(
                _worker,
                [
                    (path, tag, args.rate / CLIENTS, args.group_size, args.seconds)
                    for tag in range(CLIENTS)
                ],
            )
            pid = _writer_pid(path)  # started by the first client
            time.sleep(args.seconds * 0.2)  # past the clients' start
            spy = None
            if args.profile:
                py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                record = ["record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
                duration = str(int(args.seconds * 0.6))
                spy = subprocess.Popen(
                    [py_spy, *record, "--output", args.profile, "--duration", duration],
                    stdout=subprocess.DEVNULL,
                )
            cpu_start, wall_start = _cpu_seconds(pid), time.perf_counter()
            time.sleep(args.seconds * 0.6)
            cpu = _cpu_seconds(pid) - cpu_start
            wall = time.perf_counter() - wall_start
            results = work.get()
        if spy is not None:
            spy.wait()
        sent = sum(count for count, _ in results)
        latencies = sorted(itertools.chain.from_iterable(lat for _, lat in results))
        rate = sent / args.seconds
        print(
            f"{sent:,} messages ({args.group_size - 1 if args.group_size > 1 else 1} recipients"
            f" each) in {args.seconds:.0f} s: {rate:,.0f}/s asked {args.rate:,.0f}/s;"
            f" writer CPU {cpu / wall:.0%} of a core, {cpu / (wall * rate) * 1e6:.1f} µs/message;"
            f" request to answer p50 {latencies[len(latencies) // 2] * 1e3:.1f} ms,"
            f" p99 {latencies[int(len(latencies) * 0.99)] * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
