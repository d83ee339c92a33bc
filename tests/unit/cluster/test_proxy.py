"""Tests for tests.support.proxy: the cuttable TCP proxy used for fault injection."""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from clusterchat.cluster.ports import free_port
from tests.support.proxy import TcpProxy
from tests.support.timing import seconds

ProxyFactory = Callable[[tuple[str, int]], TcpProxy]


class EchoServer:
    """An echo server in the test's loop that records when its connections end."""

    def __init__(self) -> None:
        self.closed = 0
        self.changed = asyncio.Condition()
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return ("127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write(b"<eof>")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            async with self.changed:
                self.closed += 1
                self.changed.notify_all()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    """A running echo server on a free loopback port."""
    echo = EchoServer()
    echo.server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    yield echo
    echo.server.close()
    await echo.server.wait_closed()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), seconds(5))


async def _roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await _connect(port)
    try:
        writer.write(payload)
        return await asyncio.wait_for(reader.readexactly(len(payload)), seconds(5))
    finally:
        writer.close()
        await writer.wait_closed()


async def _ended(reader: asyncio.StreamReader) -> bool:
    """True once the connection delivers EOF or a reset."""
    try:
        return await asyncio.wait_for(reader.read(1), seconds(5)) == b""
    except ConnectionError:
        return True


async def test_proxy_forwards_both_ways(echo: EchoServer, tcp_proxy_factory: ProxyFactory) -> None:
    """Bytes written to the proxy reach the target and the answers come back."""
    proxy = tcp_proxy_factory(echo.address)
    payload = bytes(range(256)) * 1024  # more than one read's worth
    assert await _roundtrip(proxy.listen_port, payload) == payload
    assert proxy.accepted == 1


async def test_proxy_passes_half_close_on(
    echo: EchoServer, tcp_proxy_factory: ProxyFactory
) -> None:
    """A client's EOF reaches the target, which can still answer after it."""
    proxy = tcp_proxy_factory(echo.address)
    reader, writer = await _connect(proxy.listen_port)
    try:
        writer.write(b"last words")
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), seconds(5))
    finally:
        writer.close()
        await writer.wait_closed()
    assert reply == b"last words<eof>"


async def test_cut_resets_open_connections_and_refuses_new_ones(
    echo: EchoServer, tcp_proxy_factory: ProxyFactory
) -> None:
    """After cut() both ends of every connection see it end, and connecting is refused."""
    proxy = tcp_proxy_factory(echo.address)
    reader, writer = await _connect(proxy.listen_port)
    try:
        writer.write(b"hi")
        assert await asyncio.wait_for(reader.readexactly(2), seconds(5)) == b"hi"
        assert proxy.active == 1
        proxy.cut()
        assert proxy.is_cut
        assert proxy.active == 0
        assert await _ended(reader)
        async with echo.changed:
            await asyncio.wait_for(echo.changed.wait_for(lambda: echo.closed == 1), seconds(5))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):  # the reset may be reported here
            await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await _connect(proxy.listen_port)


async def test_restore_accepts_again_on_the_same_port(
    echo: EchoServer, tcp_proxy_factory: ProxyFactory
) -> None:
    """restore() reopens the same listen port, and traffic flows again."""
    proxy = tcp_proxy_factory(echo.address)
    port = proxy.listen_port
    proxy.cut()
    proxy.restore()
    assert not proxy.is_cut
    assert proxy.listen_port == port
    assert await _roundtrip(port, b"again") == b"again"


async def test_close_stops_listening_and_is_idempotent(echo: EchoServer) -> None:
    """close() ends connections, frees the port and can be called twice."""
    proxy = TcpProxy(echo.address)
    reader, writer = await _connect(proxy.listen_port)
    proxy.close()
    proxy.close()
    try:
        assert await _ended(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await _connect(proxy.listen_port)
    with pytest.raises(RuntimeError, match="closed"):
        proxy.restore()


async def test_unreachable_target_ends_the_client_connection(
    tcp_proxy_factory: ProxyFactory,
) -> None:
    """When the target refuses, the proxied client is disconnected rather than left hanging."""
    proxy = tcp_proxy_factory(("127.0.0.1", free_port()))
    reader, writer = await _connect(proxy.listen_port)
    try:
        assert await _ended(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def test_proxy_works_without_an_event_loop_in_the_caller() -> None:
    """Sync code (fixtures, child processes' traffic) can use the proxy too."""
    with (
        socket.create_server(("127.0.0.1", 0)) as target,
        TcpProxy(("127.0.0.1", target.getsockname()[1])) as proxy,
        socket.create_connection(("127.0.0.1", proxy.listen_port), seconds(5)) as client,
    ):
        target.settimeout(seconds(5))
        conn, _ = target.accept()
        with conn:
            client.sendall(b"sync")
            conn.settimeout(seconds(5))
            assert conn.recv(4) == b"sync"
