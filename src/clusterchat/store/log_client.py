"""LogClient: a node's side of the machine's SQLite log writer (``log_server.py``).

``append`` and ``save_cursors`` send a request and wait for its answer. The
first request (or ``connect``) connects; when nobody listens on the file's socket, the
client starts the writer (``python -m clusterchat.store.log_server
--detach``: a process of its own session, nobody's child, so that it
outlives this node and serves the others) and connects again. Several nodes starting one each is
harmless: all but one exit at once.

A lost connection (the writer was killed, or exited between two nodes)
does not lose or double anything: the requests that were not answered are
sent again, in order, on the next connection, marked with ``after``, an id
the log held before they were first sent, so that the writer stores only
what the lost attempt did not commit (``log_sql.committed``). A message
whose outcome was once unknown keeps that mark in every later request that
carries it, until an answer settles it. An error answer means nothing of
the request was stored: ``append`` raises, and the caller retries.
"""

import asyncio
import contextlib
import itertools
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import msgspec

from clusterchat.store.base import Appended, NewMessage
from clusterchat.store.log_wire import (
    HEADER,
    MAX_FRAME,
    Hello,
    Reply,
    Request,
    decode_appended,
    socket_name,
)

__all__ = ["LogClient", "LogWriterError"]

log = logging.getLogger("clusterchat.store")

#: Seconds between two tries to connect while a writer starts.
_RETRY = 0.02
#: Seconds a started writer has to answer before another is started.
_START_TIMEOUT = 10.0
_decode = msgspec.msgpack.Decoder(Hello | Reply).decode
_encode = msgspec.msgpack.Encoder().encode


class LogWriterError(Exception):
    """The writer answered with an error: nothing of the request was stored."""


class LogClient:
    """Sends the log's writes of one node to the writer of the SQLite file at ``path``.

    ``lock_timeout`` is given to a writer this client starts (``log_sql.append``).
    """

    def __init__(self, path: str, lock_timeout: int) -> None:
        self._path = path
        self._lock_timeout = lock_timeout
        self._name: str | None = None
        with contextlib.suppress(OSError):  # no file yet: named at the first connection
            self._name = socket_name(path)  # here, where no event loop waits for it
        self._ids = itertools.count(1)
        # id -> (request, its answer), in sending order.
        self._open: dict[int, tuple[Request, asyncio.Future[Reply]]] = {}
        # id -> the largest message id known when the request was first sent.
        self._known_at_send: dict[int, int] = {}
        # mid -> an id the log held before a lost attempt to append it.
        self._uncertain: dict[str, int] = {}
        self._known = 0  # the largest message id seen (a Hello's or an answer's)
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._answered = False  # an answer came on the current connection

    async def append(self, batch: Sequence[NewMessage]) -> list[Appended]:
        marks = [self._uncertain[m.mid] for m in batch if m.mid in self._uncertain]
        request = Request(0, list(batch), [], min(marks) if marks else None)
        reply = await self._call(request)
        for message in batch:
            self._uncertain.pop(message.mid, None)
        appended = decode_appended(batch, reply.appended)
        if appended:
            self._known = max(self._known, max(a.seq for a in appended))
        return appended

    async def connect(self) -> None:
        """Connect now (starting the writer if none runs), so that the first append
        does not wait for a writer to start."""
        if self._closed:
            raise LogWriterError("the node is closing")
        self._ensure_running()
        await self._connected.wait()
        if self._closed:
            raise LogWriterError("the node is closing")

    async def save_cursors(self, items: Sequence[tuple[int, str, int]]) -> None:
        await self._call(Request(0, [], list(items)))

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._connected.set()  # wakes a connect() still waiting
        for _, answer in self._open.values():
            if not answer.done():
                answer.set_exception(LogWriterError("the node is closing"))
        self._open.clear()

    async def _call(self, request: Request) -> Reply:
        if self._closed:
            raise LogWriterError("the node is closing")
        self._ensure_running()
        request.id = next(self._ids)
        answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._open[request.id] = (request, answer)
        if self._writer is not None:
            self._send(self._writer, request)
        try:
            reply = await answer
        finally:
            self._open.pop(request.id, None)
            self._known_at_send.pop(request.id, None)
        if reply.error is not None:
            raise LogWriterError(reply.error)
        return reply

    def _ensure_running(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _send(self, writer: asyncio.StreamWriter, request: Request) -> None:
        self._known_at_send.setdefault(request.id, self._known)
        body = _encode(request)
        writer.write(HEADER.pack(len(body)) + body)

    async def _run(self) -> None:
        """Connect, send what waits, read answers; again after a lost connection."""
        failures = 0
        while not self._closed:
            try:
                reader, writer = await self._connect()
            except OSError as exc:
                if failures % 50 == 0:
                    log.warning("cannot reach the log writer of %s: %s", self._path, exc)
                failures += 1
            else:
                try:
                    await self._serve(reader, writer)
                except (OSError, asyncio.IncompleteReadError, msgspec.DecodeError) as exc:
                    if not self._closed and failures % 50 == 0:
                        log.warning(
                            "lost the log writer of %s (%s); sending again", self._path, exc
                        )
                finally:
                    self._writer = None
                    self._connected.clear()
                    writer.close()
                    failures = 0 if self._answered else failures + 1
                    self._answered = False
                self._mark_unanswered()
            if failures:  # nothing answered since the last failure: do not spin
                await asyncio.sleep(min(0.05 * failures, 1.0))

    def _mark_unanswered(self) -> None:
        """Whatever was sent and not answered may or may not be in the log."""
        for request, _ in self._open.values():
            sent = self._known_at_send.get(request.id)
            if request.messages and sent is not None:
                after = sent if request.after is None else min(sent, request.after)
                request.after = after
                for message in request.messages:
                    self._uncertain.setdefault(message.mid, after)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = _decode(await _read_frame(reader))
        if not isinstance(hello, Hello):
            raise msgspec.DecodeError("the writer did not start with Hello")
        self._known = max(self._known, hello.last_id)
        self._writer = writer
        self._connected.set()
        for request, _ in list(self._open.values()):
            self._send(writer, request)
        while True:
            reply = _decode(await _read_frame(reader))
            if not isinstance(reply, Reply):
                raise msgspec.DecodeError("the writer sent a second Hello")
            self._answered = True
            entry = self._open.get(reply.id)
            if entry is not None and not entry[1].done():
                entry[1].set_result(reply)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to the writer, starting one if nobody listens."""
        if self._name is None:
            self._name = socket_name(self._path)
        name = self._name
        try:
            return await _open(name)
        except (ConnectionRefusedError, FileNotFoundError):
            pass
        await self._start_writer()
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            await asyncio.sleep(_RETRY)
            try:
                return await _open(name)
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise

    async def _start_writer(self) -> None:
        """Start a writer and wait until it listens (or found another one listening).

        ``--detach``: the writer binds its socket, forks and its first process
        exits, so the writer is nobody's child here (no zombie, and not
        killed with this node's child processes).
        """
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "clusterchat.store.log_server",
            "--detach",
            "--lock-timeout",
            str(self._lock_timeout),
            self._path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        code = await child.wait()
        if code != 0:
            log.warning("starting the log writer of %s failed (exit status %d)", self._path, code)


async def _open(name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to an abstract Unix socket (uvloop refuses their names: EINVAL)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, name)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_FRAME:
        raise msgspec.DecodeError(f"a frame of {size} bytes")
    return await reader.readexactly(size)
