"""A scripted peer for the client tests: a real asyncio server that speaks canned frames.

It is a stand-in for the other end of the wire, not a mock of our backends:
the test reads what the client sent and writes the bytes a server would.
"""

import asyncio
from collections import deque
from typing import Self

import msgspec

from clusterchat.protocol import JsonStreamDecoder
from tests.support.defaults import LIMITS
from tests.support.timing import seconds

__all__ = ["CannedPeer", "PeerConnection"]


class PeerConnection:
    """The server side of one accepted connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._decoder = JsonStreamDecoder(LIMITS)
        self._frames: deque[bytes] = deque()

    async def receive_frame(self) -> bytes:
        """Return the next complete frame the client sent."""
        async with asyncio.timeout(seconds(5)):
            while not self._frames:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("client closed the connection")
                self._frames.extend(self._decoder.feed(data))
        return self._frames.popleft()

    async def receive(self) -> dict[str, object]:
        """Return the next frame the client sent, decoded as a JSON object."""
        value = msgspec.json.decode(await self.receive_frame())
        assert isinstance(value, dict)
        return value

    async def receive_bytes(self, count: int) -> bytes:
        """Return exactly the next ``count`` raw bytes the client sent."""
        async with asyncio.timeout(seconds(5)):
            return await self.reader.readexactly(count)

    async def send(self, *objects: dict[str, object] | bytes, terminator: bytes = b"\n") -> None:
        """Write JSON objects (each followed by ``terminator``) or raw bytes, in one write."""
        chunks = [
            obj if isinstance(obj, bytes) else msgspec.json.encode(obj) + terminator
            for obj in objects
        ]
        self.writer.write(b"".join(chunks))
        await self.writer.drain()

    async def close(self) -> None:
        """Close the connection from the server side."""
        self.writer.close()
        await self.writer.wait_closed()


class CannedPeer:
    """A loopback TCP server; ``accept()`` returns each connection as it comes."""

    def __init__(self) -> None:
        self._accepted: asyncio.Queue[PeerConnection] = asyncio.Queue()
        self._connections: list[PeerConnection] = []
        self._server: asyncio.Server | None = None
        self.host = "127.0.0.1"
        self.port = 0

    @classmethod
    async def start(cls) -> Self:
        """Listen on a free loopback port."""
        peer = cls()
        peer._server = await asyncio.start_server(peer._on_connect, peer.host, 0)
        peer.port = peer._server.sockets[0].getsockname()[1]
        return peer

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = PeerConnection(reader, writer)
        self._connections.append(connection)
        await self._accepted.put(connection)

    async def accept(self) -> PeerConnection:
        """Return the next connection a client made."""
        async with asyncio.timeout(seconds(5)):
            return await self._accepted.get()

    async def aclose(self) -> None:
        """Close every connection and stop listening."""
        for connection in self._connections:
            connection.writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
