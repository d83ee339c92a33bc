"""What the nodes of one machine and its SQLite log writer say to each other.

The log writer (``log_server.py``) listens on an abstract Unix socket named
after the database file (``socket_name``); nodes connect with ``log_client.py``.
Every frame is a 4-byte big-endian length and a MessagePack body.

* On accepting a connection the writer sends ``Hello``: the largest message
  id in the log at that moment.
* A node sends ``Request``: messages to append and cursors to save, in one
  transaction. ``after`` is set when the request is sent again because the
  connection was lost before its answer came: the messages of it with an id
  above ``after`` may have been committed already (docs/delivery.md).
* The writer answers each request with ``Reply``: one ``Appended`` per
  message, or an error (the transaction was rolled back: nothing of the
  request was stored).
"""

import hashlib
import os
import struct
from collections.abc import Sequence

import msgspec

from clusterchat.store.base import Appended, NewMessage

__all__ = [
    "HEADER",
    "MAX_FRAME",
    "Hello",
    "Reply",
    "Request",
    "decode_appended",
    "encode_appended",
    "socket_name",
]

#: The length prefix of a frame.
HEADER = struct.Struct(">I")
#: The largest frame either side accepts (a node's batch is at most a quarter
#: of its ``max_pending``, 8 MiB by default, plus the encoding's overhead).
MAX_FRAME = 64 * 1024 * 1024

#: An ``Appended`` on the wire: its ``seq`` and positions, and for a duplicate
#: the original's ``mid``, ``time`` and body (a new message's are the node's own:
#: not sent back).
WireAppended = tuple[int, tuple[tuple[int, int], ...], tuple[str, str, bytes] | None]


class Hello(msgspec.Struct, array_like=True, tag=1):
    last_id: int


class Request(msgspec.Struct, array_like=True, tag=2):
    id: int
    messages: list[NewMessage]
    cursors: list[tuple[int, str, int]]
    after: int | None = None


class Reply(msgspec.Struct, array_like=True, tag=3):
    id: int
    appended: list[WireAppended]
    error: str | None = None


def socket_name(path: str) -> str:
    """The abstract socket of the log writer of the SQLite file at ``path``.

    Named after the file's device and inode, so every spelling of its path
    finds the same writer, and a new file at an old path never finds the
    writer of the old one.

    Raises:
        OSError: The file does not exist.
    """
    info = os.stat(path)
    digest = hashlib.sha256(f"{info.st_dev}:{info.st_ino}".encode()).hexdigest()[:32]
    return f"\0clusterchat-log-{digest}"


def encode_appended(results: list[Appended]) -> list[WireAppended]:
    return [(a.seq, a.positions, (a.mid, a.time, a.body) if a.duplicate else None) for a in results]


def decode_appended(batch: Sequence[NewMessage], wire: list[WireAppended]) -> list[Appended]:
    """The results of ``batch`` (the request's messages, in order) from their answer."""
    results = []
    for message, (seq, positions, original) in zip(batch, wire, strict=True):
        if original is None:
            results.append(Appended(message.mid, seq, message.time, message.body, positions))
        else:
            mid, time, body = original
            results.append(Appended(mid, seq, time, body, positions, True))
    return results
