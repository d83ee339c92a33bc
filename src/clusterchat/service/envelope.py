"""What the service publishes on the bus: small envelopes, each field its own.

The bus sees opaque bytes; this module is the only one that knows their shape:
a compact JSON array ``[kind, origin, user, pos, group, body]``.

* ``DELIVER``: ``user``'s log has the entry ``pos``; ``body`` is the push
  exactly as it is written to clients (kept raw, never re-encoded).
* ``GROUP_CHANGED``: the membership of ``group`` changed (drop cached members).
* ``NOTICE``: ``body`` is a push for ``user``'s sessions that is not in the log
  (a friend request: whoever misses it sees it in the next login answer).
"""

from enum import IntEnum

import msgspec

__all__ = [
    "Envelope",
    "Kind",
    "decode_envelope",
    "encode_deliver",
    "encode_group_changed",
    "encode_notice",
]


class Kind(IntEnum):
    DELIVER = 1
    GROUP_CHANGED = 3
    NOTICE = 4


class Envelope(msgspec.Struct, array_like=True, frozen=True, gc=False):
    kind: int
    origin: str
    user: int
    pos: int
    group: int
    body: msgspec.Raw


_NULL = msgspec.Raw(b"0")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def encode_deliver(origin: str, user: int, pos: int, body: bytes) -> bytes:
    return _encoder.encode(Envelope(Kind.DELIVER, origin, user, pos, 0, msgspec.Raw(body)))


def encode_group_changed(origin: str, group: int) -> bytes:
    return _encoder.encode(Envelope(Kind.GROUP_CHANGED, origin, 0, 0, group, _NULL))


def encode_notice(origin: str, user: int, body: bytes) -> bytes:
    return _encoder.encode(Envelope(Kind.NOTICE, origin, user, 0, 0, msgspec.Raw(body)))


def decode_envelope(payload: bytes) -> Envelope:
    """Raises ``msgspec.DecodeError`` for a payload that is not an envelope."""
    return _decoder.decode(payload)
