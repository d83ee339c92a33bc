"""A client that behaves like the original C++ ChatClient, for compatibility tests.

It sends each request as JSON followed by one NUL byte and reads the way the
original does: one ``recv`` of at most 1024 bytes, parsed as a C string (up to
the first NUL). To see *every* frame the server sent (the original would lose
the second of two frames arriving in one read), ``frames()`` splits the whole
byte stream on NUL as well, and checks that each frame would have fitted the
original's buffer.
"""

import json
import socket
from typing import Any, Protocol

from tests.support.timing import seconds

__all__ = [
    "PASSWORD",
    "ClassicClient",
    "login",
    "offline_texts",
    "receive_texts",
    "register",
    "sync",
]

_CLASSIC_BUFFER = 1024

#: The password every test user gets.
PASSWORD = "secret"


class _Address(Protocol):
    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class ClassicClient:
    """A blocking classic-protocol peer (use from sync tests only)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=seconds(10))
        self._pending = b""

    @classmethod
    def over(cls, sock: socket.socket) -> "ClassicClient":
        """A client on a socket connected already (from a chosen source address...)."""
        client = cls.__new__(cls)
        client.sock = sock
        client._pending = b""
        return client

    def close(self) -> None:
        self.sock.close()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message, ensure_ascii=False).encode() + b"\0")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self) -> bytes:
        """The next NUL-terminated frame, raw (without the NUL). Asserts the classic size limit."""
        while b"\0" not in self._pending:
            chunk = self.sock.recv(_CLASSIC_BUFFER)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._pending += chunk
        frame, _, self._pending = self._pending.partition(b"\0")
        assert len(frame) + 1 < _CLASSIC_BUFFER, f"frame of {len(frame) + 1} bytes"
        return frame

    def receive(self) -> dict[str, Any]:
        """The next frame, parsed."""
        value = json.loads(self.frame())
        assert isinstance(value, dict)
        return value

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        return self.receive()

    def closed_by_server(self) -> bool:
        """True once the server has closed the connection (after draining what it sent)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def register(node: _Address, *names: str, password: str = PASSWORD) -> list[int]:
    """Register ``names`` over one classic connection; return their ids, in order."""
    client = ClassicClient(node.host, node.port)
    try:
        ids = []
        for name in names:
            answer = client.request({"msgid": 4, "name": name, "password": password})
            assert answer["errno"] == 0, answer
            ids.append(int(answer["id"]))
        return ids
    finally:
        client.close()


def login(
    node: _Address, user_id: int, password: str = PASSWORD
) -> tuple[ClassicClient, dict[str, Any]]:
    """A new classic connection logged in as ``user_id``, and its login answer."""
    client = ClassicClient(node.host, node.port)
    answer = client.request({"msgid": 1, "id": user_id, "password": password})
    assert answer["errno"] == 0, answer
    return client, answer


def sync(client: ClassicClient) -> None:
    """Round-trip a ping: everything sent before it has been handled."""
    assert client.request({"msgid": 120, "ref": 99})["msgid"] == 121


def receive_texts(client: ClassicClient, count: int) -> list[str]:
    """The texts of the next ``count`` one-to-one or group chat pushes (nothing else may come)."""
    texts: list[str] = []
    while len(texts) < count:
        message = client.receive()
        assert message["msgid"] in (6, 10), message
        texts.append(message["msg"])
    return texts


def offline_texts(answer: dict[str, Any]) -> list[str]:
    """The texts of the stored messages a login answer carries, in order."""
    return [json.loads(text)["msg"] for text in answer.get("offlinemsg", [])]
