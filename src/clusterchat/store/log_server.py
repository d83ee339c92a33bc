"""The log writer: one process per SQLite file that appends the log for every node of the machine.

Started by the first node that needs it (``log_client.py``), as
``python -m clusterchat.store.log_server --detach --lock-timeout S <db>``
(S: that node's ``Settings.db_lock_timeout``); it serves the nodes that
connect to its abstract Unix socket (``log_wire.socket_name``) and exits
``IDLE_EXIT`` seconds after the last one left. A second writer started for
the same file finds the socket's name taken and exits at once, so there is
one per file (per network namespace: a namespace of its own gets a writer
of its own; both then queue on the file lock, which is correct, only slower).

Why a process: with a writer thread in each node, each append held the
file lock while its thread waited for its node's busy event loop to hand
back the GIL, and each node's commit emptied the other's page cache; at
10,000 msgs/s two nodes held the lock 92% of the time, each about twice as
long as it used CPU in it (docs/performance.md). Here one thread does
nothing but the log's transactions, on one warm connection, and the
requests of all nodes that arrived while one transaction ran are the next
transaction (group commit across nodes).

Theory of operation: requests are read by the event loop; the first one
read schedules a flush, which runs once the loop has read everything that
arrived (``call_soon``). The flush runs **in the event loop's thread**,
blocking it: while a transaction runs, requests wait in the sockets, and
they are the next batch. A flush appends the messages of up to
``MAX_MESSAGES`` requests in one transaction (``log_sql.append``, whose
results are split back per request); when that transaction fails, each
request is tried in one of its own, so that one bad request fails alone. A
request sent again after a lost connection (``after`` set) first looks up
which of its messages were committed (``log_sql.committed``) and appends
only the others.

Only processes of the writer's own user may connect (``SO_PEERCRED``): the
socket has no file and so no file permissions.
"""

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import cast

import msgspec
from sqlalchemy import Connection

from clusterchat.store import log_sql
from clusterchat.store.base import Appended
from clusterchat.store.log_wire import (
    HEADER,
    MAX_FRAME,
    Hello,
    Reply,
    Request,
    encode_appended,
    socket_name,
)
from clusterchat.store.sql import sqlite_pragmas
from clusterchat.store.sqlite_writer import SqliteWriter

__all__ = ["LogEnds", "LogServer", "apply_requests", "main"]

log = logging.getLogger("clusterchat.store")

#: Seconds the writer stays after its last node left (a node restarting finds it).
IDLE_EXIT = 2.0
#: Messages one transaction appends at most (more requests: more transactions).
MAX_MESSAGES = 4000
_PEERCRED = struct.Struct("3i")
_decode_request = msgspec.msgpack.Decoder(Request).decode
_encode = msgspec.msgpack.Encoder().encode


@dataclass
class _Work:
    """One request as the flush sees it."""

    peer: "_Peer"
    request: Request


class _Peer(asyncio.Protocol):
    """One node's connection: frames in, replies out."""

    def __init__(self, server: "LogServer") -> None:
        self._server = server
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if not _same_user(self.transport):
            log.warning("refused a connection from another user")
            self.transport.abort()
            return
        self._server.joined(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME:
                log.warning("a node sent a frame of %d bytes; closing its connection", size)
                self.close()
                return
            end = HEADER.size + size
            if len(self._buffer) < end:
                return
            frame = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            try:
                request = _decode_request(frame)
            except msgspec.DecodeError as exc:
                log.warning("a node sent a malformed request (%s); closing its connection", exc)
                self.close()
                return
            self._server.received(self, request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._server.left(self)

    def send(self, message: msgspec.Struct) -> None:
        if self.transport is not None and not self.transport.is_closing():
            body = _encode(message)
            self.transport.write(HEADER.pack(len(body)) + body)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class LogServer:
    """Appends the requests of every connected node, a batch per transaction.

    Args:
        writer: The writer of the SQLite file (its ``transaction`` is used
            in this thread).
        lock_timeout: Seconds an append waits for a lock (``log_sql.append``;
            the starting node's ``Settings.db_lock_timeout``).
    """

    def __init__(self, writer: SqliteWriter, lock_timeout: int) -> None:
        self._writer = writer
        self._lock_timeout = lock_timeout
        self._peers: set[_Peer] = set()
        self._waiting: list[_Work] = []
        self._flushing = False
        self._ends = LogEnds()
        self._idle: asyncio.TimerHandle | None = None
        self.done = asyncio.Event()

    def connection(self) -> asyncio.Protocol:
        """The protocol of one node's connection (``loop.create_unix_server``'s factory)."""
        return _Peer(self)

    def joined(self, peer: _Peer) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._peers.add(peer)
        peer.send(Hello(self._writer.transaction(_last_id)))

    def left(self, peer: _Peer) -> None:
        self._peers.discard(peer)
        if not self._peers and self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(IDLE_EXIT, self.done.set)

    def received(self, peer: _Peer, request: Request) -> None:
        self._waiting.append(_Work(peer, request))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        waiting, self._waiting = self._waiting, []
        while waiting:
            count = 0
            take = 0
            for work in waiting:
                count += len(work.request.messages)
                take += 1
                if count >= MAX_MESSAGES:
                    break
            batch, waiting = waiting[:take], waiting[take:]
            self._commit(batch)

    def _commit(self, batch: list[_Work]) -> None:
        """Commit ``batch`` in one transaction and answer each request; on a
        failure, each request alone (one bad request fails alone)."""
        try:
            results = self._writer.transaction(
                lambda conn: apply_requests(
                    conn, batch, self._lock_timeout, self._ends.current(conn)
                )
            )
        except Exception as exc:
            self._ends.forget()
            if len(batch) > 1:
                for work in batch:
                    self._commit([work])
                return
            log.warning("a log write failed (%s); the node retries it", exc)
            work = batch[0]
            work.peer.send(Reply(work.request.id, [], f"{type(exc).__name__}: {exc}"))
            return
        self._ends.committed(results)
        for work, appended in zip(batch, results, strict=True):
            work.peer.send(Reply(work.request.id, encode_appended(appended)))

    def close(self) -> None:
        for peer in list(self._peers):
            peer.close()


class LogEnds:
    """Where each user's log ends, as this writer's own commits left it.

    The writer appends to the file alone, so after its first append for a
    user it knows where that user's log ends without reading it
    (``last_positions`` was 11-12% of the writer's time at 7,500 one-to-one
    messages/s; docs/performance.md). Anyone else's commit may have changed
    that: SQLite's ``PRAGMA data_version`` of the writer's connection changes
    exactly when another connection committed (a node's own writer thread
    registering a user, a writer of another network namespace appending), and
    then everything known is forgotten. Read inside the transaction, after
    ``BEGIN IMMEDIATE``: nobody else can commit until it ends. A new
    connection (the writer reconnects after a failure) starts from nothing too.

    Were it ever stale anyway, no wrong position could be committed: a stale
    end is below the real one, every position up to the real end exists, and
    the next one given would fail on ``inbox``'s primary key; the failed
    transaction forgets everything and each request is tried again alone.

    Bounded: past ``MAX_USERS`` users it starts again from nothing.
    """

    MAX_USERS = 100_000

    def __init__(self) -> None:
        self._ends: dict[int, int] = {}
        self._seen: tuple[int, int] | None = None  # (connection, data_version)

    def current(self, conn: Connection) -> Mapping[int, int]:
        """What is known, checked against ``conn``'s open transaction."""
        dbapi = conn.connection.dbapi_connection  # not exec_driver_sql: 10% of the writer
        assert dbapi is not None  # inside a transaction
        (version,) = dbapi.execute("PRAGMA data_version").fetchone()
        seen = (id(dbapi), version)
        if seen != self._seen:
            self._ends.clear()
            self._seen = seen
        return self._ends

    def committed(self, results: list[list[Appended]]) -> None:
        """Record the positions of a committed transaction's results."""
        if len(self._ends) > self.MAX_USERS:
            self._ends.clear()
        ends = self._ends
        for appended in chain.from_iterable(results):
            # Never back: a request sent again may find an older entry (log_sql.committed).
            for user_id, pos in appended.positions:
                if pos > ends.get(user_id, 0):
                    ends[user_id] = pos

    def forget(self) -> None:
        """A transaction failed: what it read or wrote is not known."""
        self._ends.clear()
        self._seen = None


def apply_requests(
    conn: Connection,
    batch: Sequence[_Work],
    lock_timeout: int,
    ends: Mapping[int, int] | None = None,
) -> list[list[Appended]]:
    """The log's writes of ``batch`` in the caller's transaction; the results
    per request (``ends``: ``log_sql.append``'s)."""
    found: dict[str, Appended] = {}
    for work in batch:
        if work.request.after is not None and work.request.messages:
            found.update(log_sql.committed(conn, work.request.after, work.request.messages))
    fresh = [m for work in batch for m in work.request.messages if m.mid not in found]
    appended = iter(log_sql.append(conn, fresh, lock_timeout, ends) if fresh else [])
    cursors = [item for work in batch for item in work.request.cursors]
    if cursors:
        log_sql.save_cursors(conn, cursors)
    return [
        [found[m.mid] if m.mid in found else next(appended) for m in work.request.messages]
        for work in batch
    ]


def _last_id(conn: Connection) -> int:
    return int(conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM messages").scalar_one())


def _same_user(transport: asyncio.Transport) -> bool:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    _pid, uid, _gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return bool(uid == os.getuid())


async def serve(listener: socket.socket, path: str, lock_timeout: int) -> None:
    """Serve the nodes on ``listener`` until the last one left (or SIGTERM/SIGINT)."""
    loop = asyncio.get_running_loop()
    writer = SqliteWriter(f"sqlite:///{path}", path, sqlite_pragmas)
    server = LogServer(writer, lock_timeout)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.done.set)
    listening = await loop.create_unix_server(server.connection, sock=listener)
    log.info("log writer for %s ready (pid %d)", path, os.getpid())
    try:
        await server.done.wait()
    finally:
        listening.close()  # first: a node that comes now starts a new writer
        server.close()
        await writer.close()
    log.info("log writer for %s stopped", path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clusterchat.store.log_server [--detach] --lock-timeout S <db>``: 0
    also when another writer serves the file.

    ``--detach``: once the socket listens, fork; the first process exits (so
    that its starter, waiting for it, knows the writer listens) and the
    writer goes on in a session of its own.
    """
    parser = argparse.ArgumentParser(
        prog="python -m clusterchat.store.log_server",
        description="The log writer of one SQLite file (started by the nodes themselves).",
    )
    parser.add_argument("--detach", action="store_true", help="fork once listening")
    parser.add_argument(
        "--lock-timeout", type=int, required=True, help="seconds an append waits for a lock"
    )
    parser.add_argument("path", help="the SQLite file")
    args = parser.parse_args(argv)
    path: str = args.path
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(socket_name(path))
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            return 0  # another writer serves this file
        print(f"log writer for {path}: {exc}", file=sys.stderr)
        return 1
    listener.listen(64)
    if args.detach:
        if os.fork() != 0:
            os._exit(0)
        os.setsid()
    import uvloop

    uvloop.run(serve(listener, path, args.lock_timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
