"""The machine's SQLite log writer process (``clusterchat.store.log_server``), with real processes.

Nodes append through it (``SqlStore(machine_writer=True)``); here two stores
in the test process stand for two nodes. What must hold: one writer serves
every node of a file and leaves after the last one; a writer SIGKILLed in
the middle of a flood loses nothing and stores nothing twice (a batch whose
answer was lost is sent again and stored only where the lost attempt had
not committed it); another user cannot connect.
"""

import asyncio
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockBuster
from sqlalchemy import Row, create_engine, text

from clusterchat.cluster.log_writers import log_writer_pids
from clusterchat.store.base import Appended, NewMessage
from clusterchat.store.log_client import LogWriterError
from clusterchat.store.log_server import IDLE_EXIT, LogServer, apply_requests
from clusterchat.store.log_wire import socket_name
from clusterchat.store.sql import SqlStore, sqlite_pragmas
from clusterchat.store.sqlite_writer import SqliteWriter
from tests.support.database import migrated
from tests.support.log_writer import wait_for_log_writers_to_exit
from tests.support.processes import pid_gone, wait_until
from tests.support.timing import seconds

pytestmark = pytest.mark.integration

USERS = 50


async def _database(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "chat.db"
    url = await asyncio.to_thread(migrated, f"sqlite:///{path}")
    store = await asyncio.to_thread(SqlStore, url, pool_size=1, lock_timeout=10)
    for index in range(USERS):
        await store.create_user(f"u{index}", "h")
    await store.close()
    return url, path


def _new_store(url: str) -> SqlStore:
    return SqlStore(url, pool_size=2, lock_timeout=10, machine_writer=True)


async def _store(url: str) -> SqlStore:
    return await asyncio.to_thread(_new_store, url)


def _message(tag: str, index: int) -> NewMessage:
    sender = 1 + index % USERS
    recipient = 1 + (index * 7 + 3) % USERS
    if recipient == sender:
        recipient = 1 + recipient % USERS
    low, high = sorted((sender, recipient))
    return NewMessage(f"{tag}-{index}", sender, f"u:{low}:{high}", (recipient,), "t", b"body")


async def _append_until_done(store: SqlStore, batch: list[NewMessage]) -> list[Appended]:
    """As the node's LogWriter does: an error answer means nothing was stored; retry."""
    while True:
        try:
            return await store.append(batch)
        except LogWriterError:
            await asyncio.sleep(0.05)


async def test_one_writer_serves_every_node_and_leaves_after_the_last(tmp_path: Path) -> None:
    url, path = await _database(tmp_path)
    stores = [await _store(url), await _store(url)]
    results = await asyncio.gather(
        *(s.append([_message(f"s{i}", n) for n in range(10)]) for i, s in enumerate(stores))
    )
    assert [len(r) for r in results] == [10, 10]
    writers = await asyncio.to_thread(log_writer_pids, path)
    assert len(writers) == 1, f"expected one writer, found {writers}"
    await stores[0].close()
    await asyncio.sleep(IDLE_EXIT + 0.5)
    assert not pid_gone(writers[0]), "the writer left while a node still used it"
    await stores[1].close()
    assert wait_until(lambda: pid_gone(writers[0]), timeout=seconds(IDLE_EXIT + 5))


async def test_the_writer_follows_appends_made_beside_it(tmp_path: Path) -> None:
    """Another writer of the file (a node's own writer thread, the writer of
    another network namespace) appends to a user's log between two appends
    of the machine's writer, which keeps where logs end in memory
    (``LogEnds``): its next entry for that user follows the other's."""
    url, path = await _database(tmp_path)
    machine = await _store(url)
    beside = await asyncio.to_thread(SqlStore, url, pool_size=1, lock_timeout=10)

    def to_user_2(tag: str) -> list[NewMessage]:
        return [NewMessage(tag, 1, "u:1:2", (2,), "t", b"body")]

    try:
        first = await machine.append(to_user_2("first"))
        between = await beside.append(to_user_2("between"))
        after = await machine.append(to_user_2("after"))
    finally:
        await machine.close()
        await beside.close()
    assert [a.positions for a in (*first, *between, *after)] == [((2, 1),), ((2, 2),), ((2, 3),)]
    assert not await asyncio.to_thread(wait_for_log_writers_to_exit, path)


async def test_a_writer_killed_mid_flood_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path,
) -> None:
    url, path = await _database(tmp_path)
    stores = [await _store(url), await _store(url)]
    batches, size = 150, 20
    results: dict[str, Appended] = {}

    async def flood(index: int) -> None:
        for number in range(batches):
            batch = [_message(f"s{index}", number * size + k) for k in range(size)]
            for message, result in zip(
                batch, await _append_until_done(stores[index], batch), strict=True
            ):
                results[message.mid] = result

    async def kill_writers() -> int:
        """SIGKILL the serving writer each time 300 more messages were answered."""
        kills = 0
        for _ in range(5):
            mark = len(results) + 300
            while len(results) < mark and not done.done():  # noqa: ASYNC110 - polls a count
                await asyncio.sleep(0.005)
            if done.done():
                break
            for pid in await asyncio.to_thread(log_writer_pids, path):
                os.kill(pid, signal.SIGKILL)
                kills += 1
        return kills

    done = asyncio.gather(flood(0), flood(1))
    kills = await kill_writers()
    await asyncio.wait_for(done, timeout=seconds(120))
    for store in stores:
        await store.close()
    assert kills >= 5, f"only {kills} writers were killed: the test did not test much"

    rows, entries = await asyncio.to_thread(_stored, path)
    sent = 2 * batches * size
    mids = [row.mid for row in rows]
    print(f"sent={sent} stored={len(mids)} distinct={len(set(mids))} writer_kills={kills}")
    assert len(mids) == len(set(mids)), "a message was stored twice"
    assert set(mids) == set(results), "a message was lost or an unknown one stored"
    id_of = {row.mid: row.id for row in rows}
    by_user: dict[int, list[int]] = {}
    entry_of = {(e.user_id, e.pos): e.message_id for e in entries}
    for e in entries:
        by_user.setdefault(e.user_id, []).append(e.pos)
    for user, positions in by_user.items():
        assert sorted(positions) == list(range(1, len(positions) + 1)), f"holes in {user}'s log"
    assert len(entries) == sent, "every message has exactly one log entry"
    for mid, result in results.items():
        assert result.seq == id_of[mid], f"{mid}: answered seq {result.seq}, stored {id_of[mid]}"
        assert len(result.positions) == 1
        assert entry_of[result.positions[0]] == id_of[mid], f"{mid}: wrong position answered"
    assert not await asyncio.to_thread(wait_for_log_writers_to_exit, path)


def _stored(path: Path) -> tuple[list[Row[Any]], list[Row[Any]]]:
    """Every message's id and mid, and every log entry."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        rows = list(conn.execute(text("SELECT id, mid FROM messages")).all())
        entries = list(conn.execute(text("SELECT user_id, pos, message_id FROM inbox")).all())
    engine.dispose()
    return rows, entries


def test_a_process_of_another_user_is_refused(tmp_path: Path) -> None:
    url, path = asyncio.run(_database(tmp_path))

    async def start_writer() -> SqlStore:
        store = await _store(url)
        await store.save_cursors([(1, "", 1)])  # connects, starting the writer
        return store

    loop = asyncio.new_event_loop()
    try:
        store = loop.run_until_complete(start_writer())
        name = socket_name(str(path))
        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            code = 2
            try:
                os.setuid(65534)  # nobody
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(10)
                    sock.connect(name)
                    code = 0 if sock.recv(64) == b"" else 1  # no Hello: closed
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "another user's process was served"
        loop.run_until_complete(store.close())
    finally:
        loop.close()
    assert not wait_for_log_writers_to_exit(path)


class _Forgetful(LogServer):
    """Commits the first ``forget`` batches, then drops the connection instead of answering."""

    def __init__(self, writer: SqliteWriter, forget: int) -> None:
        super().__init__(writer, lock_timeout=10)
        self.forget = forget

    def _commit(self, batch: list[Any]) -> None:
        if self.forget <= 0:
            super()._commit(batch)
            return
        self.forget -= 1
        self._writer.transaction(lambda conn: apply_requests(conn, batch, 10))
        for work in batch:
            work.peer.close()


def test_a_batch_committed_whose_answer_was_lost_is_stored_once(
    tmp_path: Path, blockbuster: BlockBuster | None
) -> None:
    """The writer dies between its commit and its answer: the node sends the batch
    again, and the next writer answers it from the log instead of storing it again."""
    url, path = asyncio.run(_database(tmp_path))
    if blockbuster is not None:
        blockbuster.deactivate()  # the writer blocks its own event loop, by design
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_name(str(path)))
    listener.listen(8)
    served = threading.Event()
    stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def writer_process() -> None:
        writer = SqliteWriter(f"sqlite:///{path}", str(path), sqlite_pragmas)
        server = _Forgetful(writer, forget=3)
        loop = asyncio.get_running_loop()
        serving = await loop.create_unix_server(server.connection, sock=listener)
        stop.append((loop, asyncio.Event()))
        served.set()
        await stop[0][1].wait()
        serving.close()
        server.close()
        await writer.close()

    thread = threading.Thread(target=asyncio.run, args=(writer_process(),))
    thread.start()
    assert served.wait(10)
    batches = [[_message("lost", n * 10 + k) for k in range(10)] for n in range(5)]

    async def node() -> list[list[Appended]]:
        store = _new_store(url)
        try:
            return [await store.append(batch) for batch in batches]
        finally:
            await store.close()

    try:
        answers = asyncio.run(node())
    finally:
        writer_loop, stopping = stop[0]
        writer_loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
    rows, entries = _stored(path)
    mids = [row.mid for row in rows]
    assert len(mids) == len(set(mids)) == 50, f"{len(mids)} stored, {len(set(mids))} distinct"
    id_of = {row.mid: row.id for row in rows}
    entry_of = {(e.user_id, e.pos): e.message_id for e in entries}
    assert len(entries) == 50
    for batch, answer in zip(batches, answers, strict=True):
        for message, result in zip(batch, answer, strict=True):
            assert result.seq == id_of[message.mid]
            assert [entry_of[p] for p in result.positions] == [id_of[message.mid]]
