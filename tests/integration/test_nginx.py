"""clusterchat.cluster.nginx for real: the config passes ``nginx -t`` and nginx balances."""

import asyncio
import itertools
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest

from clusterchat.cluster import processes
from clusterchat.cluster.nginx import nginx_argv, render_nginx_conf
from clusterchat.cluster.ports import free_port
from tests.support.nginx import NginxFactory
from tests.support.processes import assert_stopped
from tests.support.timing import seconds

pytestmark = pytest.mark.integration

Address = tuple[str, int]
StartNginx = Callable[..., processes.Child]
"""``start_nginx(listen=..., upstreams=..., ...)``: blocking, so async tests call it in a thread."""


async def _port_answering_server() -> asyncio.Server:
    """A TCP server that writes its own port number and closes."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{writer.get_extra_info('sockname')[1]}\n".encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


def _port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


async def _ask(port: int) -> int:
    """Connect to ``port`` and return the port number the far end answers with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        line = await asyncio.wait_for(reader.readline(), seconds(5))
    finally:
        writer.close()
        await writer.wait_closed()
    return int(line)


@pytest.fixture
async def echo_servers() -> AsyncIterator[list[asyncio.Server]]:
    """Two port-answering servers in the test's loop."""
    servers = [await _port_answering_server() for _ in range(2)]
    yield servers
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[StartNginx]:
    """Render a config, start nginx with it, wait for its ports; stop every nginx by pid."""
    children: list[processes.Child] = []

    def start(
        *,
        listen: Address,
        upstreams: list[Address],
        idle_timeout_s: int = 3600,
        http_listen: Address | None = None,
        http_upstreams: Sequence[Address] = (),
    ) -> processes.Child:
        conf = render_nginx_conf(
            tmp_path,
            listen=listen,
            upstreams=upstreams,
            idle_timeout_s=idle_timeout_s,
            http_listen=http_listen,
            http_upstreams=http_upstreams,
        )
        (tmp_path / "nginx.conf").write_text(conf)
        child = processes.spawn("nginx", nginx_argv(tmp_path), log_path=tmp_path / "error.log")
        children.append(child)
        for address in (listen, http_listen):
            if address is not None:
                processes.wait_for_port(*address, seconds(10), child)
        return child

    yield start
    for child in children:
        processes.stop(child, timeout=seconds(10))
        assert_stopped(child)


def _nginx_t(prefix: Path, conf: str) -> subprocess.CompletedProcess[str]:
    (prefix / "nginx.conf").write_text(conf)
    return subprocess.run(
        [*nginx_argv(prefix), "-t"],
        capture_output=True,
        text=True,
        timeout=seconds(30),
        check=False,
    )


@pytest.mark.parametrize("with_http", [False, True])
def test_rendered_config_passes_nginx_t(tmp_path: Path, with_http: bool) -> None:
    """The real nginx binary accepts the config, with and without the http block."""
    conf = render_nginx_conf(
        tmp_path,
        listen=("127.0.0.1", free_port()),
        upstreams=[("127.0.0.1", free_port()), ("127.0.0.1", free_port())],
        http_listen=("127.0.0.1", free_port()) if with_http else None,
        http_upstreams=[("127.0.0.1", free_port())] if with_http else (),
    )
    result = _nginx_t(tmp_path, conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_t_rejects_a_broken_config(tmp_path: Path) -> None:
    """The nginx -t check above can fail: a config error is reported."""
    conf = render_nginx_conf(
        tmp_path, listen=("127.0.0.1", free_port()), upstreams=[("127.0.0.1", free_port())]
    )
    result = _nginx_t(tmp_path, conf.replace("proxy_timeout", "proxy_timeout_typo"))
    assert result.returncode != 0
    assert "proxy_timeout_typo" in result.stderr


async def test_nginx_balances_tcp_round_robin(
    echo_servers: list[asyncio.Server], start_nginx: StartNginx
) -> None:
    """Consecutive clients land on alternating nodes."""
    listen = free_port()
    upstreams = [("127.0.0.1", _port(s)) for s in echo_servers]
    child = await asyncio.to_thread(start_nginx, listen=("127.0.0.1", listen), upstreams=upstreams)
    answers = [await _ask(listen) for _ in range(6)]
    assert sorted(set(answers)) == sorted(port for _, port in upstreams)
    assert all(a != b for a, b in itertools.pairwise(answers))
    await asyncio.to_thread(processes.stop, child, seconds(10))
    assert_stopped(child)


async def test_nginx_passes_clients_on_from_a_dead_node(
    echo_servers: list[asyncio.Server], start_nginx: StartNginx
) -> None:
    """A node that refuses connections is skipped: every client reaches the live one."""
    listen = free_port()
    live = _port(echo_servers[0])
    dead = free_port()  # nothing listens here
    await asyncio.to_thread(
        start_nginx,
        listen=("127.0.0.1", listen),
        upstreams=[("127.0.0.1", dead), ("127.0.0.1", live)],
    )
    assert [await _ask(listen) for _ in range(4)] == [live] * 4


async def test_nginx_closes_connections_idle_past_the_idle_timeout(
    start_nginx: StartNginx,
) -> None:
    """idle_timeout_s is what nginx enforces on a silent connection, on both sides."""
    node_saw_close = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # returns at EOF: nginx closed the node side
        node_saw_close.set()
        writer.close()
        await writer.wait_closed()

    node = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        listen = free_port()
        await asyncio.to_thread(
            start_nginx,
            listen=("127.0.0.1", listen),
            upstreams=[("127.0.0.1", _port(node))],
            idle_timeout_s=1,
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", listen)
        started = time.monotonic()
        try:
            assert await asyncio.wait_for(reader.read(), seconds(10)) == b""
            elapsed = time.monotonic() - started
            await asyncio.wait_for(node_saw_close.wait(), seconds(10))
        finally:
            writer.close()
            await writer.wait_closed()
        assert elapsed >= 0.9  # closed by the idle timeout, not at once
    finally:
        node.close()
        await node.wait_closed()


async def test_nginx_http_block_forwards_websocket_upgrade(
    start_nginx: StartNginx,
) -> None:
    """The http front door passes Upgrade/Connection to the node and then tunnels bytes."""
    seen_headers: list[str] = []

    async def ws_node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen_headers.extend(head.decode().lower().split("\r\n"))
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        line = await reader.readline()
        writer.write(b"pong " + line)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    node = await asyncio.start_server(ws_node, "127.0.0.1", 0)
    try:
        tcp_listen, http_listen = free_port(), free_port()
        await asyncio.to_thread(
            start_nginx,
            listen=("127.0.0.1", tcp_listen),
            upstreams=[("127.0.0.1", free_port())],
            http_listen=("127.0.0.1", http_listen),
            http_upstreams=[("127.0.0.1", _port(node))],
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", http_listen)
        try:
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: chat\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), seconds(5))
            assert head.startswith(b"HTTP/1.1 101 ")
            writer.write(b"ping\n")
            assert await asyncio.wait_for(reader.readline(), seconds(5)) == b"pong ping\n"
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        node.close()
        await node.wait_closed()
    assert "upgrade: websocket" in seen_headers
    assert "connection: upgrade" in seen_headers


async def test_nginx_factory_fixture_balances_and_stops_by_pid(
    echo_servers: list[asyncio.Server], nginx_factory: NginxFactory
) -> None:
    """The nginx_factory fixture starts a working balancer and stop() leaves no process."""
    upstreams: list[Address] = [("127.0.0.1", _port(s)) for s in echo_servers]
    handle = await asyncio.to_thread(nginx_factory, upstreams)
    answers = {await _ask(handle.port) for _ in range(4)}
    assert answers == {port for _, port in upstreams}
    await asyncio.to_thread(handle.stop)
    assert_stopped(handle.child)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", handle.port)
