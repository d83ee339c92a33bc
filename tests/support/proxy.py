"""A cuttable loopback TCP proxy for fault injection, and its pytest fixture.

Put a ``TcpProxy`` between a client and a real server (a node and its
redis-server, a test and a node) and call ``cut()`` to simulate a network
failure without touching the server: every open connection through the proxy
is reset and new connections are refused (the listening socket is closed).
``restore()`` listens again on the same port.

Theory of operation: the proxy runs its own asyncio event loop in a daemon
thread. That makes it usable from async tests (it keeps forwarding while the
test's loop awaits), from sync tests and fixtures, and for traffic between
child processes while the test's loop is blocked or not running at all. Its
methods are synchronous: each one runs on the proxy's loop and waits there
for completion, which takes milliseconds and never depends on the caller's
loop, so calling them from a coroutine is safe. When ``cut()`` returns, every
connection is already closed and the port already refuses.
"""

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import TypeVar

import pytest

from tests.support.timing import seconds

__all__ = ["TcpProxy", "tcp_proxy_factory"]

_T = TypeVar("_T")
_CHUNK = 65536


class _Pipe:
    """One proxied connection: the client side and the server side."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Reset both sides at once (RST, no graceful FIN)."""
        for task in self.tasks:
            task.cancel()
        self.client.transport.abort()
        self.server.transport.abort()


class TcpProxy:
    """Forward TCP from ``127.0.0.1:listen_port`` to ``target``, with a kill switch.

    Args:
        target: The ``(host, port)`` every accepted connection is forwarded to.
        listen_host: The loopback address to listen on.

    Attributes:
        listen_port: The port clients connect to (fixed for the proxy's life).
        accepted: How many connections were accepted so far.
    """

    def __init__(self, target: tuple[str, int], listen_host: str = "127.0.0.1") -> None:
        self.target = target
        self.listen_host = listen_host
        self.listen_port = 0
        self.accepted = 0
        self._pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"TcpProxy->{target}", daemon=True
        )
        self._thread.start()
        try:
            self._run(self._listen())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def is_cut(self) -> bool:
        """Whether the proxy currently refuses connections."""
        return self._server is None

    @property
    def active(self) -> int:
        """How many connections are currently being forwarded."""
        return self._run(self._count())

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until ``restore()``."""
        self._run(self._cut())

    def restore(self) -> None:
        """Accept connections again, on the same ``listen_port``."""
        if self._closed:
            raise RuntimeError("the proxy is closed")
        self._run(self._listen())

    def close(self) -> None:
        """Cut everything and stop the proxy's thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._cut())
        finally:
            self._stop_loop()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- running on the proxy's loop -----------------------------------------

    def _run(self, coro: Coroutine[None, None, _T]) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=seconds(10))

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=seconds(10))
        self._loop.close()

    def _refusing(self) -> bool:
        # A call, not the property: the answer changes across awaits.
        return self._server is None

    async def _count(self) -> int:
        return len(self._pipes)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self.listen_port, reuse_address=True
        )
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # Connections the loop accepted in this iteration get their transport
            # in the next one; closing the server before that makes CPython 3.11
            # fail to attach it and leak the socket. One loop turn lets them
            # attach (and abort, as we now refuse); later accept callbacks are
            # cancelled by close().
            await asyncio.sleep(0)
            server.close()
            await server.wait_closed()
        pipes, self._pipes = self._pipes, set()
        for pipe in pipes:
            pipe.abort()
        # Wait for every other task of this loop: pipes just aborted, handlers and
        # half-accepted connections (they see the cut and abort). Only then is
        # every connection closed; stopping the loop earlier could leave one open.
        current = asyncio.current_task()
        while pending := {task for task in asyncio.all_tasks() if task is not current}:
            await asyncio.wait(pending)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing():  # accepted just before a cut
            writer.transport.abort()
            return
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if self._refusing():  # cut while connecting upstream
            writer.transport.abort()
            up_writer.transport.abort()
            return
        pipe = _Pipe(writer, up_writer)
        pipe.tasks = [
            asyncio.create_task(self._forward(reader, up_writer)),
            asyncio.create_task(self._forward(up_reader, writer)),
        ]
        self._pipes.add(pipe)
        await asyncio.gather(*pipe.tasks, return_exceptions=True)
        self._pipes.discard(pipe)
        for side in (writer, up_writer):
            side.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await side.wait_closed()

    @staticmethod
    async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction; pass an EOF on as a half-close."""
        try:
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            # One side reset: reset the other side too, as a broken network would.
            writer.transport.abort()


@pytest.fixture
def tcp_proxy_factory() -> Iterator[Callable[[tuple[str, int]], TcpProxy]]:
    """Make ``TcpProxy`` objects towards a target; all are closed at teardown."""
    proxies: list[TcpProxy] = []

    def make(target: tuple[str, int]) -> TcpProxy:
        proxy = TcpProxy(target)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
