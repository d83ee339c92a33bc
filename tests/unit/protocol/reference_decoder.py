"""A byte-at-a-time model of ``JsonStreamDecoder``, the oracle of the framing tests.

It implements the documented framing rules as plainly as possible, one byte at a
time, so that its behaviour cannot depend on how the stream is chunked. The fast
decoder must agree with it on every input:

* between frames, space, tab, CR, LF and NUL are skipped; a NUL marks the peer
  as a classic (NUL-terminating) client;
* a NUL ends the frame in progress wherever it comes (inside a string or
  after a backslash too): the bytes before it are the frame;
* a frame starting with ``{`` or ``[`` ends at the bracket (of either kind) that
  brings the nesting back to zero, brackets inside strings not counting;
* a frame starting with ``"`` is a top-level string ending at its closing quote;
* any other frame is a bare scalar ending before the next whitespace, NUL,
  bracket or quote, and is only emitted once that byte has arrived;
* inside strings a backslash escapes the next byte, whatever it is;
* each byte is first applied to the nesting (an opener past ``max_depth`` fails
  with TOO_DEEP), then counted (a frame over ``max_frame`` bytes fails with
  FRAME_TOO_LARGE); the first violation in the stream is the one reported, and
  the decoder is spent afterwards.
"""

from clusterchat.protocol import ErrorCode, FramingError, Limits

__all__ = ["ReferenceDecoder"]

_SEPARATORS = frozenset(b" \t\r\n\x00")
_SCALAR_END = frozenset(b' \t\n\r\x0b\x0c\x00{}[]"')
_OPENERS = frozenset(b"{[")
_CLOSERS = frozenset(b"}]")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


class ReferenceDecoder:
    """Slow, obviously chunking-independent twin of ``JsonStreamDecoder``."""

    def __init__(self, limits: Limits) -> None:
        self._max_frame = limits.max_frame
        self._max_depth = limits.max_depth
        self._frame: bytearray | None = None
        self._scalar = False
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._error: FramingError | None = None
        self.nul_terminated = False

    @property
    def buffered(self) -> int:
        """Bytes of the frame in progress."""
        return 0 if self._frame is None else len(self._frame)

    def feed(self, data: bytes) -> list[bytes]:
        """Apply ``data`` byte by byte; return the frames completed, in order."""
        if self._error is not None:
            raise self._error
        frames: list[bytes] = []
        try:
            for byte in data:
                self._step(byte, frames)
        except FramingError as exc:
            self._error = exc
            raise
        return frames

    def _step(self, byte: int, frames: list[bytes]) -> None:
        frame = self._frame
        if frame is None:
            self._begin(byte)
            return
        if byte == 0:
            frames.append(bytes(frame))
            self._frame = None
            self._begin(byte)
            return
        if self._scalar:
            if byte in _SCALAR_END:
                frames.append(bytes(frame))
                self._frame = None
                self._begin(byte)
                return
            frame.append(byte)
            self._check_size(frame)
            return
        frame.append(byte)
        complete = False
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif byte == _BACKSLASH:
                self._escaped = True
            elif byte == _QUOTE:
                self._in_string = False
                complete = self._depth == 0
        elif byte == _QUOTE:
            self._in_string = True
        elif byte in _OPENERS:
            self._depth += 1
            if self._depth > self._max_depth:
                raise FramingError(ErrorCode.TOO_DEEP, "too deep")
        elif byte in _CLOSERS:
            self._depth -= 1
            complete = self._depth == 0
        self._check_size(frame)
        if complete:
            frames.append(bytes(frame))
            self._frame = None

    def _begin(self, byte: int) -> None:
        if byte in _SEPARATORS:
            if byte == 0:
                self.nul_terminated = True
            return
        frame = bytearray([byte])
        self._frame = frame
        self._scalar = byte not in _OPENERS and byte != _QUOTE
        self._depth = 1 if byte in _OPENERS else 0
        self._in_string = byte == _QUOTE
        self._escaped = False
        self._check_size(frame)

    def _check_size(self, frame: bytearray) -> None:
        if len(frame) > self._max_frame:
            raise FramingError(ErrorCode.FRAME_TOO_LARGE, "too large")
