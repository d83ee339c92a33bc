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

Theory of operation. The rules, applied as if one byte at a time (so the result
never depends on how the stream was chunked):

* between frames, space, tab, CR, LF and NUL are skipped; a NUL marks the peer
  as a classic client;
* a NUL byte ends the frame in progress wherever it comes, inside a string or
  after a backslash too (JSON never holds a raw NUL): what came before it is
  the frame, which the codec then answers as malformed, and the stream carries
  on after the NUL instead of waiting in silence for brackets to close;
* a frame starting with ``{`` or ``[`` ends at the bracket (either kind) that
  brings the nesting back to zero, brackets inside strings not counting; inside
  strings a backslash escapes the next byte, whatever it is;
* a frame starting with ``"`` is a top-level string, ending at its closing quote;
* any other frame is a bare scalar (or garbage) that ends before the next
  whitespace, NUL, bracket or quote, once that byte has arrived;
* the first violation in the stream is the one reported: an opener past
  ``max_depth`` (TOO_DEEP) or a frame's byte number ``max_frame + 1``
  (FRAME_TOO_LARGE), the nesting being checked first when both fall on one byte.

Two scanners implement these rules. The fast one matches a whole frame at a
time with one regular expression, for frames that are complete in the bytes at
hand and nested at most ``_FAST_DEPTH`` levels (every classic message). The
general one walks a frame from bracket to bracket, skipping whole strings, and
keeps its state (depth, inside a string or not, how far it got) across feeds;
it takes over whenever the fast one does not match, so it alone handles split,
deep, scalar and garbage frames. Both use possessive quantifiers only, whose
alternatives never start with the same byte, so no match ever backtracks and
every byte is looked at a bounded number of times.
"""

import re
from functools import cache

from clusterchat.protocol.errors import ErrorCode, FramingError
from clusterchat.protocol.limits import CLASSIC_FRAME_MAX, Limits

__all__ = ["JsonStreamDecoder", "classic_frame", "ndjson_line"]

_SEPARATOR_RUN = re.compile(rb"[ \t\r\n\x00]*+")
_SCALAR_END = re.compile(rb'[\s\x00{}\[\]"]')
# Everything up to the next bracket, whole strings included; stops at the quote
# of a string that is not complete in the bytes at hand.
_TO_NEXT_BRACKET = re.compile(
    rb'(?:[^"{}\[\]\x00]++|"[^"\\\x00]*+(?:\\[^\x00][^"\\\x00]*+)*+")*+', re.DOTALL
)
# The rest of a string up to its closing quote (excluded), or up to the end of
# the bytes at hand, or up to a final backslash whose escaped byte is missing,
# or up to a NUL (which ends the frame).
_STRING_BODY = re.compile(rb'[^"\\\x00]*+(?:\\[^\x00][^"\\\x00]*+)*+', re.DOTALL)
# An object with no bracket and no backslash inside: it ends at the first "}",
# provided the quotes before it are paired (checked by the caller).
_PLAIN_OBJECT = re.compile(rb"[ \t\r\n\x00]*+(\{[^{}\[\]\\\x00]*+\})[ \t\r\n\x00]*+")
_FAST_DEPTH = 3
_OPENERS = b"{["
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


@cache
def _fast_frame(depth: int) -> re.Pattern[bytes]:
    """A complete object or array nested at most ``depth`` levels, with separators around it."""
    string = rb'"[^"\\\x00]*+(?:\\[^\x00][^"\\\x00]*+)*+"'
    between = rb'[^"{}\[\]\x00]*+'
    value = rb"[{\[]" + between + rb"(?:" + string + between + rb")*+[}\]]"
    for _ in range(depth - 1):
        inner = rb"(?:" + string + rb"|" + value + rb")"
        value = rb"[{\[]" + between + rb"(?:" + inner + between + rb")*+[}\]]"
    return re.compile(rb"[ \t\r\n\x00]*+(" + value + rb")[ \t\r\n\x00]*+", re.DOTALL)


class JsonStreamDecoder:
    """Bytes in, frames out: ``feed(data) -> list[bytes]``.

    After a ``FramingError`` has been raised, the decoder is spent: every
    further ``feed`` raises the same error.

    Attributes:
        nul_terminated: True once the peer has ended a frame with a NUL byte,
            i.e. it is a classic client whose frames must be answered with NUL
            terminators and kept under 1024 bytes.

    Args:
        limits: Only ``max_frame`` and ``max_depth`` are read here.
    """

    def __init__(self, limits: Limits) -> None:
        self._max_frame = limits.max_frame
        self._max_depth = limits.max_depth
        # Nesting of the first bracket is never checked, so depth 1 is always safe.
        self._fast = _fast_frame(max(1, min(_FAST_DEPTH, limits.max_depth))).match
        # The frame in progress, from its first byte, and the general scanner's
        # state for it: where to resume, nesting depth, inside a string or not.
        self._partial = bytearray()
        self._resume = 0
        self._depth = 0
        self._in_string = False
        self._error: FramingError | None = None
        self.nul_terminated = False

    @property
    def buffered(self) -> int:
        """Bytes held for a frame that is not complete yet."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frames they complete, in order.

        Raises:
            FramingError: a frame exceeds the size or nesting limit. Frames
                completed before the violation in the same call are lost to the
                caller, which must close the connection anyway.
        """
        if self._error is not None:
            raise self._error
        if type(data) is not bytes:
            data = bytes(data)
        frames: list[bytes] = []
        try:
            if self._partial:  # continue the frame in progress
                held = len(self._partial)
                buf = self._partial
                buf += data
                stop = self._advance(buf, 0, self._resume)
                if stop < 0:
                    if len(buf) > self._max_frame:
                        raise self._too_large()
                    return frames
                if stop > self._max_frame:
                    raise self._too_large()
                frames.append(bytes(buf[:stop]))
                buf.clear()
                self._scan(data, stop - held, frames)  # it cannot end in bytes scanned before
            else:
                self._scan(data, 0, frames)
        except FramingError as exc:
            self._error = exc
            self._partial.clear()
            raise
        return frames

    def _scan(self, data: bytes, pos: int, frames: list[bytes]) -> None:
        """Cut ``data[pos:]`` into frames; keep a trailing incomplete one in ``_partial``."""
        end = len(data)
        max_frame = self._max_frame
        plain = _PLAIN_OBJECT.match
        fast = self._fast
        quotes = data.count
        find = data.find
        append = frames.append
        nul = self.nul_terminated
        while pos < end:
            match = plain(data, pos)
            if match is not None:
                start, stop = match.span(1)
                if quotes(b'"', start, stop) & 1:  # the "}" is inside a string
                    match = None
            if match is None:
                match = fast(data, pos)
                if match is None:  # not a complete shallow object or array
                    pos = self._scan_one(data, pos, frames)
                    nul = self.nul_terminated
                    continue
                start, stop = match.span(1)
            if start != pos and not nul and find(0, pos, start) >= 0:
                nul = self.nul_terminated = True
            if stop - start > max_frame:
                raise self._too_large()
            append(data[start:stop])
            pos = match.end()  # past the separators that follow the frame
            if pos != stop and not nul and find(0, stop, pos) >= 0:
                nul = self.nul_terminated = True

    def _scan_one(self, data: bytes, pos: int, frames: list[bytes]) -> int:
        """Skip separators and walk one frame with the general scanner; return where it ends.

        An incomplete frame is kept in ``_partial`` and ``len(data)`` returned.
        """
        end = len(data)
        run = _SEPARATOR_RUN.match(data, pos)
        start = run.end() if run is not None else pos
        if start != pos and not self.nul_terminated and data.find(0, pos, start) >= 0:
            self.nul_terminated = True
        if start == end:
            return end
        stop = self._begin(data, start)
        if stop < 0:
            if end - start > self._max_frame:
                raise self._too_large()
            self._partial += memoryview(data)[start:]
            self._resume -= start
            return end
        if stop - start > self._max_frame:
            raise self._too_large()
        frames.append(data[start:stop])
        return stop

    def _begin(self, buf: bytes | bytearray, start: int) -> int:
        """Start the general scanner on the frame at ``buf[start]``; see ``_advance``."""
        first = buf[start]
        self._depth = 1 if first in _OPENERS else 0
        self._in_string = first == _QUOTE
        return self._advance(buf, start, start + 1)

    def _advance(self, buf: bytes | bytearray, start: int, pos: int) -> int:
        """Scan the frame that began at ``buf[start]`` from ``pos`` on.

        Returns:
            The index just past the frame's end, or -1 when ``buf`` ends first,
            in which case the scanner's state is saved for the next feed (with
            ``_resume`` relative to ``buf``).

        Raises:
            FramingError: an opener past ``max_depth``, or FRAME_TOO_LARGE if the
                frame was already too large before that opener.
        """
        end = len(buf)
        depth = self._depth
        in_string = self._in_string
        if depth == 0 and not in_string:  # a bare scalar runs to the next delimiter
            delimiter = _SCALAR_END.search(buf, pos)
            if delimiter is not None:
                return delimiter.start()
            self._resume = end
            return -1
        while True:
            if in_string:
                body = _STRING_BODY.match(buf, pos)
                if body is not None:  # always: the pattern matches the empty string
                    pos = body.end()
                if pos == end:
                    break
                char = buf[pos]
                if char == 0:
                    return pos
                if char == _BACKSLASH:  # the escaped byte is a NUL, or not here yet
                    if pos + 1 < end:
                        return pos + 1
                    break
                pos += 1
                in_string = False
                if depth == 0:  # a top-level string is a complete value
                    return pos
            skipped = _TO_NEXT_BRACKET.match(buf, pos)
            if skipped is not None:  # always: the pattern matches the empty string
                pos = skipped.end()
            if pos == end:
                break
            char = buf[pos]
            if char == 0:
                return pos
            pos += 1
            if char == _QUOTE:
                in_string = True
            elif char in _OPENERS:
                depth += 1
                if depth > self._max_depth:
                    if pos - 1 - start > self._max_frame:
                        raise self._too_large()
                    raise FramingError(
                        ErrorCode.TOO_DEEP, f"nesting deeper than {self._max_depth} levels"
                    )
            else:
                depth -= 1
                if depth == 0:
                    return pos
        self._depth, self._in_string, self._resume = depth, in_string, pos
        return -1

    def _too_large(self) -> FramingError:
        return FramingError(ErrorCode.FRAME_TOO_LARGE, f"frame larger than {self._max_frame} bytes")


def ndjson_line(json: bytes) -> bytes:
    """Frame an encoded message for a modern peer: one object per line."""
    return json + b"\n"


def classic_frame(json: bytes) -> bytes:
    """Frame an encoded message for a classic peer: NUL-terminated, under 1024 bytes.

    Raises:
        ValueError: the message does not fit; the caller must split it first
            (see ``codec.split_classic``).
    """
    if len(json) + 1 > CLASSIC_FRAME_MAX:
        raise ValueError(f"classic frame of {len(json) + 1} bytes exceeds {CLASSIC_FRAME_MAX}")
    return json + b"\x00"
