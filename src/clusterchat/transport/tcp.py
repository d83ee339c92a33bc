"""The TCP listener: one ``asyncio.Protocol`` per client connection.

``data_received`` feeds the sans-I/O decoder, decodes each frame and hands the
request to the chat service, in order: while a request that must wait (login,
register...) is running, later requests of the same connection queue behind it
and reading pauses if the queue grows. Outgoing messages are coalesced into
one write per event-loop turn.

Error handling at the edge (STYLE.md §3):

* ``FramingError`` (frame too large, nesting too deep): error answer, close.
* ``InvalidMessage`` (malformed JSON, bad field, unknown msgid): error answer.
* A client over its request rate (flooding) is disconnected; others are
  unaffected.
* A connection that is not logged in (not yet, or no longer after a logout)
  for ``login_timeout`` seconds is closed.
* Capacity: a node takes at most ``max_connections`` connections, and at most
  ``max_per_address`` from one address (the client's own, from the PROXY
  header when the node sits behind nginx: ``proxy_protocol``). A connection
  over a limit gets an error answer naming the limit, then is closed; the
  refusals are logged at most once a minute per address and limit.

Output and slow readers (docs/delivery.md §Slow readers): outgoing messages
are coalesced into one write per event-loop turn. Above ``high_water`` bytes
of unsent output the connection is not ``writable``: chat pushes wait in the
log (the service's feed writes them when the output drains) and the
connection's requests are not read, so a client that does not read costs the
node at most about ``high_water`` bytes, and is never cut for it. Only a
connection whose output makes no progress at all for ``stall_timeout``
seconds is given up (closed); what it had not been handed stays in the log.
``written`` and ``delivered`` count the bytes queued and the bytes the kernel
took (a lower bound), so that the service knows which pushes a connection
that died really had. The kernel's own send buffer is bounded
(``send_buffer``), which bounds what a dying connection can take with it.
"""

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, cast

from clusterchat.protocol import (
    ErrorCode,
    FramingError,
    InvalidMessage,
    JsonStreamDecoder,
    Limits,
    Outbound,
    Request,
    decode_request,
    error_answer,
)
from clusterchat.service.chat import ChatService
from clusterchat.service.sessions import SessionState, WritableWaiters
from clusterchat.service.throttled_log import ThrottledLog
from clusterchat.transport.flood import TokenBucket
from clusterchat.transport.proxy_protocol import ProxyHeaderError, parse_proxy_header

__all__ = ["ConnectionLimits", "TcpConnection", "TcpServer"]

log = logging.getLogger("clusterchat.transport")

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per-connection bounds.

    No field has a default: the node builds them from its settings
    (``Settings.pick(ConnectionLimits)``, defaults in ``clusterchat.settings``).

    Attributes:
        max_rate: Sustained requests per second before the client counts as flooding.
        max_burst: Requests allowed at once above the sustained rate.
        high_water: Bytes of unsent output above which pushes wait and
            requests are not read.
        max_outbound: Bytes of unsent output (answers only: pushes stop at
            ``high_water``) above which the connection is given up.
        stall_timeout: Seconds without any output progress after which a
            connection that is above ``high_water`` is given up.
        send_buffer: The kernel's send buffer per connection (``SO_SNDBUF``;
            Linux doubles it); 0 keeps the kernel's default.
        max_backlog: Requests queued behind a slow request before reading pauses.
        login_timeout: Seconds a connection may stay without logging in (also
            after logging out).
        max_connections: Connections the node takes at once.
        max_per_address: Connections from one client address at once.
        proxy_protocol: Each connection begins with a PROXY header (nginx's
            ``proxy_protocol on``) naming the client's address.
        log_throttle_interval: Seconds between two log lines of one kind of
            refusal (per address and limit).
        log_throttle_kinds: Kinds of such lines remembered.
    """

    max_rate: float
    max_burst: float
    high_water: int
    max_outbound: int
    stall_timeout: float
    send_buffer: int
    max_backlog: int
    login_timeout: float
    max_connections: int
    max_per_address: int
    proxy_protocol: bool
    log_throttle_interval: float
    log_throttle_kinds: int


class TcpConnection(asyncio.Protocol):
    """One client connection; implements the service's ``Session``."""

    def __init__(self, server: "TcpServer") -> None:
        self._server = server
        # Cached: in Python 3.11 every get_running_loop() is a getpid() system
        # call, which cost 14% of a busy node's event loop (docs/performance.md).
        self._loop = asyncio.get_running_loop()
        self._service = server.service
        self._limits = server.limits
        self._decoder = JsonStreamDecoder(server.protocol_limits)
        self._bucket = TokenBucket(self._limits.max_rate, self._limits.max_burst)
        self._transport: asyncio.Transport | None = None
        # Requests (and refusals of undecodable ones) waiting behind a running
        # request, answered in the order they came; made when first needed and
        # dropped when emptied (an empty deque is 624 bytes: docs/performance.md).
        self._backlog: deque[Request | InvalidMessage] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._backlog_full = False
        self._reading = True
        self._out: list[bytes] = []
        self._out_size = 0
        self._written = 0
        self._flushed = 0
        self._delivered = 0
        self._write_paused = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._waiters = WritableWaiters()
        self._closed = False
        self._login_timer: asyncio.TimerHandle | None = None
        self.id = next(_ids)
        self.peer = "?"
        self.address = "?"
        self.state: SessionState | None = None
        # Bytes that came before the PROXY header was complete (proxy_protocol).
        self._header: bytearray | None = None

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.set_write_buffer_limits(
            high=self._limits.high_water, low=self._limits.high_water // 4
        )
        sock = transport.get_extra_info("socket")
        if self._limits.send_buffer > 0 and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._limits.send_buffer)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.address, self.peer = str(peer[0]), f"{peer[0]}:{peer[1]}"
        else:
            self.address = self.peer = str(peer)
        if self._limits.proxy_protocol:
            self._header = bytearray()
            # The header is the first thing nginx sends: a peer that sends none
            # is closed by the login timer like any silent connection.
            self._time_login()
            return
        self._admit()

    def _admit(self) -> None:
        """The client's address is known: take the connection, or refuse it at a limit."""
        refusal = self._server.admit(self)
        if refusal is not None:
            self._refuse(refusal)
            return
        self.state = self._service.open(self)
        if self._login_timer is None:
            self._time_login()
        log.info("[%d] = connection from %s", self.id, self.peer)

    def _refuse(self, reason: str) -> None:
        """Answer with the limit the connection broke, then close it."""
        assert self._transport is not None
        self._closed = True
        answer = error_answer(None, ErrorCode.TOO_MANY_CONNECTIONS, reason)
        # A newline ends it for both kinds of peer: a classic client parses a
        # JSON text with trailing whitespace as well.
        self._transport.write(Outbound.of(answer).line)
        self._transport.close()
        self._server.refused(self.address, reason)

    def connection_lost(self, exc: Exception | None) -> None:
        # ``_delivered`` stays as last observed: the transport may have dropped
        # its buffer already, so asking it now could count lost bytes as handed.
        self._closed = True
        self._server.release(self)
        for timer in (self._login_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._waiters.wake(False)
        if self.state is None:
            return  # refused, or closed before its PROXY header: no session
        log.info("[%d] = connection from %s closed", self.id, self.peer)
        # A request still running (a login half-way) is not cancelled: it
        # finishes against a closed session, then the worker tells the service.
        if self._worker is None:
            self._end_session()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()
        if self._stall_timer is None and not self._closed:
            self._stall_timer = asyncio.get_running_loop().call_later(
                self._limits.stall_timeout, self._stalled
            )

    def resume_writing(self) -> None:
        self._write_paused = False
        self._observe()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._update_reading()
        if self.writable:
            self._waiters.wake(True)

    def _end_session(self) -> None:
        if self.state is not None:
            self._server.spawn(self._service.closed(self.state))

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._header is not None:
            rest = self._read_header(data)
            if rest is None:
                return
            data = rest
        try:
            frames = self._decoder.feed(data)
        except FramingError as exc:
            self._reply_error(exc.request_msgid, exc.code, exc.message)
            self.close(exc.message)
            return
        for frame in frames:
            if not self._bucket.take():
                self._reply_error(None, ErrorCode.FLOODING, "too many requests: disconnected")
                self.close("flooding")
                return
            request: Request | InvalidMessage
            try:
                request = decode_request(frame, self._server.protocol_limits)
            except InvalidMessage as exc:
                request = exc
            if self._worker is not None:
                if self._backlog is None:
                    self._backlog = deque()
                self._backlog.append(request)
                if len(self._backlog) >= self._limits.max_backlog and not self._backlog_full:
                    self._backlog_full = True
                    self._update_reading()
                continue
            if isinstance(request, InvalidMessage):
                self._refuse_invalid(request)
                continue
            self._run(request)

    def _refuse_invalid(self, exc: InvalidMessage) -> None:
        self._reply_error(exc.request_msgid, exc.code, exc.message, ref=exc.ref)

    def _read_header(self, data: bytes) -> bytes | None:
        """Take the PROXY header; return the bytes after it once it is complete."""
        assert self._header is not None
        self._header += data
        try:
            parsed = parse_proxy_header(bytes(self._header))
        except ProxyHeaderError as exc:
            self._server.refused(self.address, str(exc))
            self._closed = True
            assert self._transport is not None
            self._transport.abort()
            return None
        if parsed is None:
            return None
        taken, source = parsed
        rest = bytes(self._header[taken:])
        self._header = None
        if source is not None:
            self.address, self.peer = source[0], f"{source[0]}:{source[1]}"
        self._admit()
        return None if self._closed else rest

    def _update_reading(self) -> None:
        """Read requests only while their answers can go out and the backlog has room."""
        if self._transport is None or self._closed:
            return
        want = not self._backlog_full and not self._write_paused
        if want != self._reading:
            self._reading = want
            if want:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    # --- request processing ----------------------------------------------------------

    def _run(self, request: Request) -> None:
        assert self.state is not None
        pending = self._service.handle(self.state, request)
        if pending is not None:
            self._worker = self._server.spawn(self._work(pending))

    async def _work(self, pending: Coroutine[Any, Any, None]) -> None:
        assert self.state is not None
        try:
            await pending
            while self._backlog and not self._closed:
                request = self._backlog.popleft()
                if isinstance(request, InvalidMessage):
                    self._refuse_invalid(request)
                    continue
                more = self._service.handle(self.state, request)
                if more is not None:
                    await more
        finally:
            self._worker = None
            if not self._backlog:
                self._backlog = None
        if self._closed:
            self._end_session()
            return
        self._watch_login()
        if self._backlog_full:
            self._backlog_full = False
            self._update_reading()

    def _watch_login(self) -> None:
        """Time a connection that is not logged in: before its login, and after a logout."""
        assert self.state is not None
        if self.state.logged_in and self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        elif not self.state.logged_in and self._login_timer is None and not self._closed:
            self._time_login()

    def _time_login(self) -> None:
        """Close the connection if it is not logged in within ``login_timeout``."""
        self._login_timer = self._loop.call_later(self._limits.login_timeout, self._login_expired)

    def _login_expired(self) -> None:
        if self.state is not None and self.state.logged_in:
            return
        self._reply_error(None, ErrorCode.NOT_LOGGED_IN, "login timeout: disconnected")
        self.close("login timeout")

    def _stalled(self) -> None:
        self._stall_timer = None
        log.warning(
            "[%d] %s read nothing for %.0f s: giving up on it",
            self.id,
            self.peer,
            self._limits.stall_timeout,
        )
        self._give_up()

    def _give_up(self) -> None:
        """Drop the connection at once; what it was not handed stays in the log."""
        if self._closed or self._transport is None:
            return
        self._observe()
        self._closed = True
        self._out.clear()
        self._transport.abort()

    # --- Session ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def writable(self) -> bool:
        return (
            not self._closed and not self._write_paused and self._out_size < self._limits.high_water
        )

    @property
    def written(self) -> int:
        return self._written

    @property
    def delivered(self) -> int:
        if not self._closed:
            self._observe()
        return self._delivered

    async def wait_writable(self) -> bool:
        return await self._waiters.wait(self)

    def send(self, message: Outbound) -> None:
        if self._closed:
            return
        data = message.classic if self._decoder.nul_terminated else message.line
        assert self._transport is not None
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)
        self._out_size += len(data)
        self._written += len(data)
        if self._out_size + self._transport.get_write_buffer_size() > self._limits.max_outbound:
            log.warning("[%d] %s does not read its answers: giving up on it", self.id, self.peer)
            self._give_up()

    def _flush(self) -> None:
        transport = self._transport
        if self._out and transport is not None and not self._closed:
            transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
            self._flushed += self._out_size
            self._observe()
        self._out.clear()
        self._out_size = 0
        if self._waiters and self.writable:
            self._waiters.wake(True)

    def _observe(self) -> None:
        """Note how many bytes the kernel has taken (the transport's buffer only shrinks)."""
        if self._transport is not None:
            done = self._flushed - self._transport.get_write_buffer_size()
            if done > self._delivered:
                self._delivered = done

    def close(self, reason: str) -> None:
        if self._closed or self._transport is None:
            return
        log.info("[%d] closing %s: %s", self.id, self.peer, reason)
        self._flush()
        self._closed = True
        self._waiters.wake(False)
        self._transport.close()

    def _reply_error(
        self, request_msgid: int | None, code: ErrorCode, message: str, *, ref: int | None = None
    ) -> None:
        self.send(Outbound.of(error_answer(request_msgid, code, message, ref=ref)))


class TcpServer:
    """Accepts TCP clients for one ``ChatService``."""

    def __init__(
        self,
        service: ChatService,
        *,
        protocol_limits: Limits,
        limits: ConnectionLimits,
    ) -> None:
        self.service = service
        self.protocol_limits = protocol_limits
        self.limits = limits
        self.connections: set[TcpConnection] = set()
        self._per_address: dict[str, int] = {}
        self._refusals = ThrottledLog(
            log, interval=limits.log_throttle_interval, max_kinds=limits.log_throttle_kinds
        )
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def admit(self, connection: TcpConnection) -> str | None:
        """Count ``connection`` in, or say which limit it would break."""
        limits = self.limits
        if len(self.connections) >= limits.max_connections:
            return f"the node is full: {limits.max_connections} connections"
        count = self._per_address.get(connection.address, 0)
        if count >= limits.max_per_address:
            return f"too many connections from {connection.address}: {limits.max_per_address}"
        self._per_address[connection.address] = count + 1
        self.connections.add(connection)
        return None

    def release(self, connection: TcpConnection) -> None:
        """Count ``connection`` out (it closed); nothing if it was never counted in."""
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        count = self._per_address[connection.address] - 1
        if count:
            self._per_address[connection.address] = count
        else:
            del self._per_address[connection.address]

    def refused(self, address: str, reason: str) -> None:
        """Log a refused connection (at most once a minute per address and reason)."""
        self._refusals.log(
            (address, reason), logging.WARNING, "refused a connection from %s: %s", address, reason
        )

    async def start(
        self, host: str, port: int, *, tls: ssl.SSLContext | None, reuse_port: bool
    ) -> tuple[str, int]:
        """Listen; return the bound address (port 0: any).

        Args:
            host: The address to listen on.
            port: The port (0: any).
            tls: Listen with TLS.
            reuse_port: Share the port with other processes (``SO_REUSEPORT``:
                the kernel spreads connections over them; ``--workers``).
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: TcpConnection(self),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=4096,
            ssl=tls,
        )
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Stop accepting, close every connection, wait for their clean-up."""
        self.stop_accepting()
        for connection in list(self.connections):
            connection.close("server shutting down")
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as a task that ``close()`` waits for."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
