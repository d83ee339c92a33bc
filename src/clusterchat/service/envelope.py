"""What the service publishes on the bus: small envelopes, each field its own.

The bus sees opaque bytes; this module is the only one that knows their shape:
a compact JSON array ``[kind, origin, user, pos, group, body, entries]``.

* ``DELIVER``: ``user``'s log has the entry ``pos``; ``body`` is the push
  exactly as it is written to clients (kept raw, never re-encoded).
* ``GROUP_DELIVER``: a message to ``group``, published once on the group's
  channel: ``entries`` is ``[user, pos, user, pos, ...]``, each member's
  entry in its log; ``body`` as for ``DELIVER``.
* ``HEADS``: ``entries`` is ``[user, pos, ...]``: each user's log reached
  ``pos`` (published again after a publish failed; no body: a node whose
  feeds are behind reads the log).
* ``GROUP_CHANGED``: the membership of ``group`` changed (drop cached
  members); ``user`` joined it (0: nobody in particular).
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
    "encode_group_deliver",
    "encode_heads",
    "encode_notice",
]


class Kind(IntEnum):
    DELIVER = 1
    GROUP_DELIVER = 2
    GROUP_CHANGED = 3
    NOTICE = 4
    HEADS = 5


class Envelope(msgspec.Struct, array_like=True, frozen=True, gc=False):
    kind: int
    origin: str
    user: int
    pos: int
    group: int
    body: msgspec.Raw
    entries: tuple[int, ...] = ()


_NULL = msgspec.Raw(b"0")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def encode_deliver(origin: str, user: int, pos: int, body: bytes) -> bytes:
    return _encoder.encode(Envelope(Kind.DELIVER, origin, user, pos, 0, msgspec.Raw(body)))


def encode_group_deliver(origin: str, group: int, entries: tuple[int, ...], body: bytes) -> bytes:
    return _encoder.encode(
        Envelope(Kind.GROUP_DELIVER, origin, 0, 0, group, msgspec.Raw(body), entries)
    )


def encode_heads(origin: str, entries: tuple[int, ...]) -> bytes:
    return _encoder.encode(Envelope(Kind.HEADS, origin, 0, 0, 0, _NULL, entries))


def encode_group_changed(origin: str, group: int, user: int | None) -> bytes:
    """``user``: the member who joined (None: the group changed otherwise)."""
    return _encoder.encode(Envelope(Kind.GROUP_CHANGED, origin, user or 0, 0, group, _NULL))


def encode_notice(origin: str, user: int, body: bytes) -> bytes:
    return _encoder.encode(Envelope(Kind.NOTICE, origin, user, 0, 0, msgspec.Raw(body)))


def decode_envelope(payload: bytes) -> Envelope:
    """Raises ``msgspec.DecodeError`` for a payload that is not an envelope."""
    return _decoder.decode(payload)
