"""Splitting a byte stream into JSON frames, and writing frames (docs/protocol.md §1).

Input framing accepted, all on the same connection:

* each JSON value followed by a NUL byte (the classic client),
* values separated by whitespace or newlines,
* values back to back with nothing between them,

with several values in one read or one value split over many reads.

The decoder finds value boundaries by counting brackets outside strings; it
does not parse JSON (the codec does that), so a frame it returns may still be
malformed JSON. It fails only with ``FramingError``, for a value larger than
``max_frame`` bytes or nested deeper than ``max_depth``; after that the stream
cannot be trusted and the connection must be closed.
"""

import re

from clusterchat.protocol.errors import ErrorCode, FramingError
from clusterchat.protocol.limits import CLASSIC_FRAME_MAX, Limits

__all__ = ["JsonStreamDecoder", "classic_frame", "ndjson_line"]

_NEXT_IN_VALUE = re.compile(rb'[{}\[\]"]')
_NEXT_IN_STRING = re.compile(rb'["\\]')
_SCALAR_END = re.compile(rb'[\s\x00{}\[\]"]')
_SEPARATORS = frozenset(b" \t\r\n\x00")
_OPEN = frozenset(b"{[")
_QUOTE = ord('"')
_NUL = 0


class JsonStreamDecoder:
    """Bytes in, frames out: ``feed(data) -> list[bytes]``.

    After a ``FramingError`` has been raised, the decoder is spent: every
    further ``feed`` raises the same error.

    Attributes:
        nul_terminated: True once the peer has ended a frame with a NUL byte,
            i.e. it is a classic client whose frames must be answered with NUL
            terminators and kept under 1024 bytes.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        self._max_frame = limits.max_frame
        self._max_depth = limits.max_depth
        self._buf = bytearray()
        self._pos = 0  # next byte to scan
        self._start = -1  # start of the frame being scanned, -1 between frames
        self._depth = 0
        self._in_string = False
        self._error: FramingError | None = None
        self.nul_terminated = False

    @property
    def buffered(self) -> int:
        """Bytes held for a frame that is not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frames they complete, in order.

        Raises:
            FramingError: a frame exceeds the size or nesting limit. Frames
                completed before the violation in the same call are lost to the
                caller, which must close the connection anyway.
        """
        if self._error is not None:
            raise self._error
        self._buf += data
        try:
            return self._scan()
        except FramingError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def _scan(self) -> list[bytes]:
        buf = self._buf
        end = len(buf)
        pos = self._pos
        start = self._start
        depth = self._depth
        in_string = self._in_string
        frames: list[bytes] = []
        while pos < end:
            if start < 0:
                byte = buf[pos]
                if byte in _SEPARATORS:
                    if byte == _NUL:
                        self.nul_terminated = True
                    pos += 1
                    continue
                start = pos
                pos += 1
                if byte in _OPEN:
                    depth = 1
                elif byte == _QUOTE:
                    in_string = True
                continue
            if depth == 0 and not in_string:
                # A bare scalar (number, literal or garbage) runs to a separator.
                match = _SCALAR_END.search(buf, pos)
                if match is None:
                    pos = end
                    break
                pos = match.start()
                frames.append(self._take(start, pos))
                start = -1
                continue
            if in_string:
                match = _NEXT_IN_STRING.search(buf, pos)
                if match is None:
                    pos = end
                    break
                if match[0] == b"\\":
                    pos = match.end() + 1  # skip the escaped byte, even if not received yet
                    continue
                in_string = False
                pos = match.end()
                if depth == 0:  # a top-level string is a complete value
                    frames.append(self._take(start, pos))
                    start = -1
                continue
            match = _NEXT_IN_VALUE.search(buf, pos)
            if match is None:
                pos = end
                break
            pos = match.end()
            char = match[0]
            if char == b'"':
                in_string = True
            elif char in (b"{", b"["):
                depth += 1
                if depth > self._max_depth:
                    raise FramingError(
                        ErrorCode.TOO_DEEP, f"nesting deeper than {self._max_depth} levels"
                    )
            else:
                depth -= 1
                if depth == 0:
                    frames.append(self._take(start, pos))
                    start = -1
        if start >= 0 and end - start > self._max_frame:
            raise FramingError(ErrorCode.FRAME_TOO_LARGE, self._too_large())
        # Drop what has been consumed; keep the partial frame at the front.
        keep_from = start if start >= 0 else min(pos, end)
        if keep_from:
            del buf[:keep_from]
            pos -= keep_from
            if start >= 0:
                start = 0
        self._pos, self._start, self._depth, self._in_string = pos, start, depth, in_string
        return frames

    def _take(self, start: int, stop: int) -> bytes:
        if stop - start > self._max_frame:
            raise FramingError(ErrorCode.FRAME_TOO_LARGE, self._too_large())
        return bytes(self._buf[start:stop])

    def _too_large(self) -> str:
        return f"frame larger than {self._max_frame} bytes"


def ndjson_line(json: bytes) -> bytes:
    """Frame an encoded message for a modern peer: one object per line."""
    return json + b"\n"


def classic_frame(json: bytes) -> bytes:
    """Frame an encoded message for a classic peer: NUL-terminated, under 1024 bytes.

    Raises:
        ValueError: the message does not fit; the caller must split it first
            (see ``codec.classic_frames``).
    """
    if len(json) + 1 > CLASSIC_FRAME_MAX:
        raise ValueError(f"classic frame of {len(json) + 1} bytes exceeds {CLASSIC_FRAME_MAX}")
    return json + b"\x00"
