"""RedisPublisher: PUBLISH pipelined on one connection, with no round trip to wait for.

The publishing half of ``RedisBus`` (see the theory of operation in
``clusterchat.bus.redis``), written against the wire because the hot path of
the whole chat server runs through it (docs/performance.md):

* ``publish()`` is a plain function: it encodes the command (RESP, a few
  bytes of header around the payload), appends it to this loop turn's output
  and returns a future for the reply. The first publish of a turn schedules one
  ``transport.write`` of everything published in that turn: one syscall per
  turn, however many messages, and no added delay for a lone one.
* Commands are never held back while earlier replies are outstanding: the
  connection is a true pipeline. Redis answers in order, so replies resolve
  the waiting futures first in, first out; hiredis parses them.
* One connection, no pool to exhaust (FIELD-NOTES: redis-py's 100-connection
  limit), no task per message (a future is all a caller awaits).
* Failure: a lost connection, or a reply missing ``timeout`` seconds after its
  command was written, fails **every** outstanding publish with ``BusError``
  (the callers store their messages) and drops the connection; the next
  publish connects afresh. No retries: a PUBLISH may have been delivered
  before the connection broke, and the caller stores what failed.

redis-py is still what the subscriber and presence use; only this command,
on this path, is written by hand. Also home of the small helpers the Redis bus
modules share.
"""

import asyncio
import contextlib
import importlib.util
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.exceptions import RedisError

from clusterchat.bus.base import BusError

__all__ = ["FAILURES", "NO_DRIVER_INFO", "PublishRefusedError", "RedisPublisher", "aclose_quietly"]

log = logging.getLogger("clusterchat.bus")

FAILURES = (RedisError, OSError)
"""What a Redis round trip raises when Redis is unreachable (OSError includes TimeoutError)."""

# redis-py >= 7.2 builds a DriverInfo for every new connection, reading package
# metadata from disk (a blocking os.stat in the event loop), then sends CLIENT
# SETINFO. driver_info=None skips both; older versions read it once, at import.
NO_DRIVER_INFO: dict[str, Any] = (
    {"driver_info": None} if importlib.util.find_spec("redis.driver_info") else {}
)
"""Keyword arguments for every Redis client we build."""

_CLOSE_TIMEOUT = 1.0
_ASKING = b"*1\r\n$6\r\nASKING\r\n"


class PublishRefusedError(BusError):
    """Redis answered the publish with an error reply (e.g. ``MOVED 3999 host:port``).

    Attributes:
        reply: The error reply's text.
    """

    def __init__(self, reply: str) -> None:
        super().__init__(f"publish refused: {reply}")
        self.reply = reply


async def aclose_quietly(client: Redis) -> None:
    """``aclose()`` a client, bounded in time; failures are logged at DEBUG, not raised."""
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await client.aclose()
    except FAILURES as exc:
        log.debug("bus: closing a client failed: %r", exc)


class _Pipeline(asyncio.Protocol):
    """One connection to Redis: writes commands, matches replies to futures in order."""

    def __init__(self, on_lost: "Callable[[_Pipeline, Exception | None], None]") -> None:
        self._on_lost = on_lost
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if not self.waiting:
                self.abort(ConnectionError("reply without a command"))
                return
            future = self.waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(PublishRefusedError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._on_lost(self, exc)

    def abort(self, reason: Exception) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()
        self.lost = True
        self._on_lost(self, reason)


def _command(*parts: bytes) -> bytes:
    """RESP encoding of one command (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class RedisPublisher:
    """Pipelines PUBLISH (or SPUBLISH) commands over one connection.

    Args:
        url: Redis URL (``redis://[[user]:password@]host[:port][/db]``).
        client_name: CLIENT SETNAME of the connection (visible in CLIENT LIST).
        timeout: Bound on connecting, and on waiting for any one reply.
        command: ``"PUBLISH"`` or ``"SPUBLISH"``.
    """

    def __init__(
        self, url: str, *, client_name: str, timeout: float, command: str = "PUBLISH"
    ) -> None:
        options = parse_url(url)
        if "path" in options or options.get("connection_class") is not None:
            raise ValueError(f"the publisher speaks plain TCP only, not {url!r}")
        self._host = str(options.get("host", "localhost"))
        self._port = int(options.get("port", 6379))
        self._handshake: list[bytes] = []
        password, username = options.get("password"), options.get("username")
        if password:
            auth = [b"AUTH", str(password).encode()]
            if username:
                auth.insert(1, str(username).encode())
            self._handshake.append(_command(*auth))
        if int(options.get("db", 0) or 0):
            self._handshake.append(_command(b"SELECT", str(options["db"]).encode()))
        self._handshake.append(_command(b"CLIENT", b"SETNAME", client_name.encode()))
        self._timeout = timeout
        self._header = b"*3\r\n$%d\r\n%s\r\n" % (len(command), command.encode())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipe: _Pipeline | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._backlog: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._out: list[bytes] = []
        self._closed = False
        self._failing = False

    def publish(self, channel: str, payload: bytes, *, asking: bool = False) -> asyncio.Future[int]:
        """Send one publication with this turn's write; the future gets its receiver count.

        Args:
            channel: The full (prefixed) channel name.
            payload: Opaque bytes.
            asking: Precede it with ASKING (following a cluster's ``-ASK`` redirection).

        Returns:
            A future resolved with the receiver count Redis replied, or failed
            with ``BusError`` (Redis unreachable or too slow, refused, or the
            publisher closed).
        """
        loop = self._loop
        if loop is None:  # cached: get_running_loop() is a system call (tcp.py)
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(BusError("bus closed"))
            return future
        name = channel.encode()
        command = b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            self._header,
            len(name),
            name,
            len(payload),
            payload,
        )
        if asking:  # two commands, one reply each: ASKING's "+OK" (or failure) is ignored
            ignored: asyncio.Future[Any] = loop.create_future()
            ignored.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._enqueue(loop, _ASKING, ignored)
        self._enqueue(loop, command, future)
        return future

    def _enqueue(
        self, loop: asyncio.AbstractEventLoop, command: bytes, future: asyncio.Future[Any]
    ) -> None:
        pipe = self._pipe
        if pipe is None:
            self._backlog.append((command, future))
            if self._connecting is None:
                self._connecting = loop.create_task(self._connect(), name="redis-publisher")
            return
        if not self._out:
            loop.call_soon(self._write)
        self._out.append(command)
        pipe.waiting.append(future)

    def mark_stale(self) -> None:
        """The connection probably died (the subscriber lost Redis): drop it now."""
        if self._pipe is not None:
            self._pipe.abort(ConnectionError("marked stale"))

    async def close(self, reason: str = "bus closed") -> None:
        """Fail whatever is outstanding (``BusError(reason)``) and close the connection."""
        self._closed = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
        if self._pipe is not None:
            self._pipe.abort(ConnectionError(reason))
        self._fail([f for _, f in self._backlog], reason)
        self._backlog = []

    def _write(self) -> None:
        """Write this turn's commands (their futures already wait on the pipeline)."""
        pipe = self._pipe
        if not self._out or pipe is None or pipe.transport is None:
            return  # nothing queued, or the connection was lost and failed them
        out, self._out = self._out, []
        pipe.transport.write(b"".join(out))
        # Every reply owed so far must come within the timeout: watch the newest.
        newest = pipe.waiting[-1] if pipe.waiting else None
        if newest is not None:
            asyncio.get_running_loop().call_later(self._timeout, self._deadline, pipe, newest)

    def _deadline(self, pipe: _Pipeline, newest: asyncio.Future[Any]) -> None:
        if not newest.done() and not pipe.lost:
            pipe.abort(TimeoutError(f"no reply from Redis within {self._timeout}s"))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        pipe: _Pipeline | None = None
        try:
            async with asyncio.timeout(self._timeout):
                _, pipe = await loop.create_connection(
                    lambda: _Pipeline(self._lost), self._host, self._port
                )
                assert pipe.transport is not None
                sock = pipe.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                replies = [loop.create_future() for _ in self._handshake]
                pipe.waiting.extend(replies)
                pipe.transport.write(b"".join(self._handshake))
                await asyncio.gather(*replies)
        except asyncio.CancelledError:  # close() while connecting: leave no socket open
            if pipe is not None and not pipe.lost:
                pipe.abort(ConnectionError("closed while connecting"))
            raise
        except (OSError, BusError, ConnectionError) as exc:  # TimeoutError is an OSError
            if pipe is not None and not pipe.lost:
                pipe.abort(ConnectionError("handshake failed"))
            self._connecting = None
            self._report_failure(exc)
            backlog, self._backlog = self._backlog, []
            self._fail([f for _, f in backlog], f"publish failed: {exc!r}")
            return
        self._connecting = None
        if self._failing:
            log.info("bus: publishing works again")
            self._failing = False
        self._pipe = pipe
        backlog, self._backlog = self._backlog, []
        if backlog:
            self._out.extend(command for command, _ in backlog)
            pipe.waiting.extend(future for _, future in backlog)
            self._write()

    def _lost(self, pipe: _Pipeline, exc: Exception | None) -> None:
        if self._pipe is pipe:
            self._pipe = None
            self._out = []
        waiting, pipe.waiting = list(pipe.waiting), deque()
        if waiting:
            self._report_failure(exc or ConnectionError("connection closed"))
            self._fail(waiting, f"publish failed: {exc!r}")

    def _report_failure(self, exc: BaseException) -> None:
        if not self._failing and not self._closed:
            log.warning("bus: publish failed (%r); callers store their messages", exc)
        self._failing = True

    @staticmethod
    def _fail(futures: Iterable[asyncio.Future[Any]], reason: str) -> None:
        for future in futures:
            if not future.done():
                future.set_exception(BusError(reason))
