"""What the service publishes on the bus: an envelope around an encoded push.

The bus sees opaque bytes; this module is the only one that knows their shape:
a compact JSON array ``[kind, origin, mid, body]`` where ``body`` is the push
exactly as it will be written to clients (kept raw: never re-encoded).
"""

from enum import IntEnum

import msgspec

__all__ = ["Envelope", "Kind", "decode_envelope", "encode_envelope"]


class Kind(IntEnum):
    DELIVER = 1  # body is a push for the channel's user
    DRAIN = 2  # something was stored for the channel's user: drain it if online here
    GROUP_CHANGED = 3  # mid holds a group id whose membership changed


class Envelope(msgspec.Struct, array_like=True, frozen=True, gc=False):
    kind: int
    origin: str
    mid: str
    body: msgspec.Raw


_NULL = msgspec.Raw(b"0")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def encode_envelope(kind: Kind, origin: str, mid: str = "", body: bytes | None = None) -> bytes:
    return _encoder.encode(
        Envelope(int(kind), origin, mid, _NULL if body is None else msgspec.Raw(body))
    )


def decode_envelope(payload: bytes) -> Envelope:
    """Raises ``msgspec.DecodeError`` for a payload that is not an envelope."""
    return _decoder.decode(payload)
