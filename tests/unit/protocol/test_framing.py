"""Examples of ``JsonStreamDecoder`` framing (docs/protocol.md §1) and of the frame writers."""

import pytest

from clusterchat.protocol import (
    CLASSIC_FRAME_MAX,
    ErrorCode,
    FramingError,
    JsonStreamDecoder,
    ProtocolError,
    classic_frame,
    ndjson_line,
)
from tests.support.defaults import LIMITS as DEFAULTS
from tests.support.defaults import limits_with

CHAT = (
    b'{"id":12,"msg":"hello there my friend 1234567890","msgid":6,'
    b'"name":"alice","time":"2026-11-25 10:00:00","toid":13}'
)


def feed_all(decoder: JsonStreamDecoder, *chunks: bytes) -> list[bytes]:
    """Feed chunks in order and collect every frame."""
    frames: list[bytes] = []
    for chunk in chunks:
        frames.extend(decoder.feed(chunk))
    return frames


def bytewise(data: bytes) -> list[bytes]:
    """``data`` one byte per chunk."""
    return [data[i : i + 1] for i in range(len(data))]


# --- Separators -------------------------------------------------------------------------


def test_nul_terminated_frame() -> None:
    """A classic client's NUL-terminated object comes out without its NUL."""
    decoder = JsonStreamDecoder(DEFAULTS)
    assert decoder.feed(CHAT + b"\x00") == [CHAT]
    assert decoder.buffered == 0


def test_newline_separated_frames() -> None:
    """NDJSON lines come out one frame per line."""
    assert JsonStreamDecoder(DEFAULTS).feed(b'{"a":1}\n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']


def test_whitespace_separated_frames() -> None:
    """Spaces, tabs and CRLF between objects are skipped, whitespace inside is kept."""
    data = b' \t{"a": 1}\r\n\t {\n "b" : [1, 2]\n}  '
    assert JsonStreamDecoder(DEFAULTS).feed(data) == [b'{"a": 1}', b'{\n "b" : [1, 2]\n}']


def test_back_to_back_values() -> None:
    """Values with nothing between them are still told apart."""
    data = b'{"a":1}{"b":2}[3]{}[]'
    assert JsonStreamDecoder(DEFAULTS).feed(data) == [
        b'{"a":1}',
        b'{"b":2}',
        b"[3]",
        b"{}",
        b"[]",
    ]


def test_mixed_separators_on_one_connection() -> None:
    """NUL, newline, spaces and nothing may all appear on the same connection."""
    data = CHAT + b"\x00" + CHAT + b"\n" + CHAT + CHAT + b" \x00 \n" + CHAT + b"\x00"
    assert JsonStreamDecoder(DEFAULTS).feed(data) == [CHAT] * 5


def test_several_frames_per_feed_and_a_partial_one() -> None:
    """A feed may complete several frames and start another, finished by the next feed."""
    decoder = JsonStreamDecoder(DEFAULTS)
    assert decoder.feed(CHAT + b"\x00" + CHAT + b"\x00" + CHAT[:40]) == [CHAT, CHAT]
    assert decoder.buffered == 40
    assert decoder.feed(CHAT[40:] + b"\x00") == [CHAT]
    assert decoder.buffered == 0


def test_frame_split_byte_by_byte() -> None:
    """A frame fed one byte at a time comes out once, when its last byte arrives."""
    decoder = JsonStreamDecoder(DEFAULTS)
    results = [decoder.feed(chunk) for chunk in bytewise(CHAT + b"\x00")]
    assert results[-2] == [CHAT]
    assert all(result == [] for i, result in enumerate(results) if i != len(results) - 2)
    assert decoder.nul_terminated


def test_empty_feed() -> None:
    """Feeding nothing returns nothing, between frames or inside one."""
    decoder = JsonStreamDecoder(DEFAULTS)
    assert decoder.feed(b"") == []
    assert decoder.feed(b'{"a":"b\\') == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b'"c"}') == [b'{"a":"b\\"c"}']


def test_bytearray_and_memoryview_input() -> None:
    """Frames are bytes even when the transport hands over a bytearray or memoryview."""
    decoder = JsonStreamDecoder(DEFAULTS)
    frames = decoder.feed(bytearray(b"{}\n")) + decoder.feed(memoryview(b"[1]\n"))  # type: ignore[arg-type]
    assert frames == [b"{}", b"[1]"]
    assert all(type(frame) is bytes for frame in frames)


# --- Strings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b'{"msg":"}"}', id="closing-brace"),
        pytest.param(b'{"msg":"{{{"}', id="opening-braces"),
        pytest.param(b'{"msg":"] [ } {"}', id="all-brackets"),
        pytest.param(b'{"msg":"say \\"hi\\" }"}', id="escaped-quotes"),
        pytest.param(b'{"msg":"C:\\\\"}', id="escaped-backslash-before-quote"),
        pytest.param(b'{"msg":"\\\\\\"}\\\\"}', id="backslashes-and-quotes"),
        pytest.param(b'{"msg":"\\u4e2d\\u0022\\u007d"}', id="unicode-escapes"),
        pytest.param('{"msg":"你好 世界 {中文}"}'.encode(), id="raw-utf8-chinese"),
        pytest.param(b'{"a":["]",{"b":"}"}],"c":"["}', id="nested-with-brackets-in-strings"),
    ],
)
def test_strings_may_hold_anything(frame: bytes) -> None:
    """Brackets, quotes and backslashes inside strings never end a frame, in any chunking."""
    stream = frame + b"\x00" + frame + frame + b"\n"
    assert JsonStreamDecoder(DEFAULTS).feed(stream) == [frame] * 3
    assert feed_all(JsonStreamDecoder(DEFAULTS), *bytewise(stream)) == [frame] * 3


def test_chinese_split_inside_a_character() -> None:
    """A UTF-8 character cut between two feeds is reassembled byte for byte."""
    frame = '{"msg":"中文消息"}'.encode()
    cut = frame.index("文".encode()) + 1
    decoder = JsonStreamDecoder(DEFAULTS)
    assert decoder.feed(frame[:cut]) == []
    assert decoder.feed(frame[cut:] + b"\x00") == [frame]


def test_escape_split_from_the_byte_it_escapes() -> None:
    """A backslash at the end of a feed escapes the first byte of the next one."""
    decoder = JsonStreamDecoder(DEFAULTS)
    assert decoder.feed(b'{"a":"x\\') == []
    assert decoder.feed(b'"}"}\n') == [b'{"a":"x\\"}"}']


# --- Values that are not objects --------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "frames"),
    [
        pytest.param(b"[1,2]\n", [b"[1,2]"], id="array"),
        pytest.param(b'"text with } and \\""\x00', [b'"text with } and \\""'], id="string"),
        pytest.param(b"123\x00-4.5e6\n", [b"123", b"-4.5e6"], id="numbers"),
        pytest.param(b"true false null ", [b"true", b"false", b"null"], id="literals"),
        pytest.param(b"hello, world\n", [b"hello,", b"world"], id="garbage-words"),
        pytest.param(b'12{"a":1}', [b"12", b'{"a":1}'], id="number-then-object"),
        pytest.param(b"}]\n", [b"}", b"]"], id="stray-closers"),
        pytest.param(b"[}", [b"[}"], id="mismatched-brackets"),
        pytest.param(b"1\x0b2\x0c3 ", [b"1", b"\x0b2", b"\x0c3"], id="vertical-tab-form-feed"),
    ],
)
def test_non_objects_come_out_as_frames(data: bytes, frames: list[bytes]) -> None:
    """Top-level arrays, strings, numbers and garbage are frames; the codec rejects them later."""
    assert JsonStreamDecoder(DEFAULTS).feed(data) == frames
    assert feed_all(JsonStreamDecoder(DEFAULTS), *bytewise(data)) == frames


def test_bare_scalar_waits_for_its_delimiter() -> None:
    """A number at the end of a feed may continue, so it is held until a delimiter arrives."""
    decoder = JsonStreamDecoder(DEFAULTS)
    assert decoder.feed(b"12") == []
    assert decoder.feed(b"34") == []
    assert decoder.buffered == 4
    assert decoder.feed(b"\x00") == [b"1234"]
    assert decoder.nul_terminated


# --- The NUL flag -----------------------------------------------------------------------


def test_nul_flag_starts_false_and_stays_false_for_ndjson() -> None:
    """A peer that separates with newlines and spaces is not a classic client."""
    decoder = JsonStreamDecoder(DEFAULTS)
    assert not decoder.nul_terminated
    decoder.feed(CHAT + b"\n" + CHAT + b" " + CHAT)
    assert not decoder.nul_terminated


def test_nul_flag_set_by_first_nul_and_kept() -> None:
    """The first NUL between frames marks a classic client for good."""
    decoder = JsonStreamDecoder(DEFAULTS)
    flags = []
    for separator in (b"\n", b"\x00", b"\n", b" "):
        decoder.feed(CHAT + separator)
        flags.append(decoder.nul_terminated)
    assert flags == [False, True, True, True]


@pytest.mark.parametrize(
    "feeds",
    [
        pytest.param([CHAT, b"\x00" + CHAT + b"\n"], id="nul-opens-the-next-feed"),
        pytest.param([b"\x00\x00" + CHAT], id="nul-before-the-first-frame"),
        pytest.param([b"[[[[[[1]]]]]]\x00" + CHAT], id="nul-after-a-deep-frame"),
        pytest.param([b"7\x00" + CHAT], id="nul-ending-a-scalar"),
        pytest.param([CHAT[:50], CHAT[50:] + b"\x00"], id="nul-ending-a-split-frame"),
    ],
)
def test_nul_flag_wherever_the_nul_falls(feeds: list[bytes]) -> None:
    """A NUL between frames marks a classic client wherever it falls in the feeds."""
    decoder = JsonStreamDecoder(DEFAULTS)
    frames = feed_all(decoder, *feeds)
    assert frames[-1] == CHAT
    assert decoder.nul_terminated


def test_nul_ends_the_frame_wherever_it_comes() -> None:
    """JSON never holds a raw NUL: it ends the frame, inside a string or an escape too."""
    decoder = JsonStreamDecoder(DEFAULTS)
    # After the NUL: the scalar y, then a string that has not ended yet.
    assert decoder.feed(b'{"a":"x\x00y"}\n') == [b'{"a":"x', b"y"]
    assert decoder.nul_terminated
    assert decoder.buffered == len(b'"}\n')
    assert JsonStreamDecoder(DEFAULTS).feed(b'{"a":"\\\x00{"b":1}\x00') == [
        b'{"a":"\\',
        b'{"b":1}',
    ]


def test_unclosed_garbage_before_a_nul_is_a_frame() -> None:
    """The issue's bytes: main waited for the braces to close and never answered."""
    decoder = JsonStreamDecoder(DEFAULTS)
    assert decoder.feed(b"{{{not json\x00\xff\xfe garbage\n") == [
        b"{{{not json",
        b"\xff\xfe",
        b"garbage",
    ]


# --- Size limit -------------------------------------------------------------------------

LIMITS = limits_with(max_frame=64, max_depth=4)


def object_of_size(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    frame = b'{"msg":"' + b"x" * (size - 10) + b'"}'
    assert len(frame) == size
    return frame


@pytest.mark.parametrize("frame", [object_of_size(64), b"[" + b"1," * 31 + b"]", b"9" * 64])
def test_frame_of_exactly_max_frame_bytes(frame: bytes) -> None:
    """A frame of max_frame bytes is accepted, whole or fed in pieces."""
    assert len(frame) == LIMITS.max_frame
    assert JsonStreamDecoder(LIMITS).feed(frame + b"\x00") == [frame]
    decoder = JsonStreamDecoder(LIMITS)
    assert decoder.feed(frame[:-1]) == []
    assert decoder.buffered == LIMITS.max_frame - 1
    assert feed_all(decoder, frame[-1:], b"\x00") == [frame]
    assert decoder.buffered == 0


@pytest.mark.parametrize("frame", [object_of_size(65), b"[" + b"1," * 31 + b"1]", b"9" * 65])
def test_frame_one_byte_over_max_frame_completed_in_one_feed(frame: bytes) -> None:
    """A complete frame of max_frame + 1 bytes fails with FRAME_TOO_LARGE."""
    with pytest.raises(FramingError) as caught:
        JsonStreamDecoder(LIMITS).feed(frame + b"\x00")
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("frame", [object_of_size(200), b"9" * 200])
def test_frame_one_byte_over_max_frame_still_partial(frame: bytes) -> None:
    """A partial frame fails as soon as max_frame + 1 of its bytes have arrived."""
    decoder = JsonStreamDecoder(LIMITS)
    assert decoder.feed(frame[:64]) == []
    with pytest.raises(FramingError) as caught:
        decoder.feed(frame[64:65])
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


def test_partial_over_max_frame_in_a_single_feed() -> None:
    """An unfinished frame over the limit fails at once, without waiting for its end."""
    with pytest.raises(FramingError) as caught:
        JsonStreamDecoder(LIMITS).feed(b'{"a":"' + b"x" * 100)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


def test_size_limit_is_per_frame() -> None:
    """Many frames each under the limit may arrive in one feed far larger than the limit."""
    frame = object_of_size(64)
    assert JsonStreamDecoder(LIMITS).feed((frame + b"\n") * 50) == [frame] * 50


def test_buffer_holds_at_most_max_frame_between_feeds() -> None:
    """However a large frame trickles in, the decoder never keeps more than max_frame bytes."""
    frame = object_of_size(64)
    decoder = JsonStreamDecoder(LIMITS)
    for chunk in bytewise((frame + b"\x00") * 3):
        decoder.feed(chunk)
        assert decoder.buffered <= LIMITS.max_frame
    assert decoder.buffered == 0


# --- Depth limit ------------------------------------------------------------------------


@pytest.mark.parametrize("opener", [b"[", b'{"k":'])
def test_nesting_at_max_depth(opener: bytes) -> None:
    """Objects and arrays nested exactly max_depth levels are accepted."""
    closer = b"]" if opener == b"[" else b"}"
    frame = opener * 4 + b"1" + closer * 4
    assert JsonStreamDecoder(LIMITS).feed(frame + b"\n") == [frame]
    assert feed_all(JsonStreamDecoder(LIMITS), *bytewise(frame + b"\n")) == [frame]


@pytest.mark.parametrize("opener", [b"[", b'{"k":'])
def test_nesting_over_max_depth(opener: bytes) -> None:
    """The opener one level past max_depth fails with TOO_DEEP, even before the frame ends."""
    with pytest.raises(FramingError) as caught:
        JsonStreamDecoder(LIMITS).feed(opener * 5)
    assert caught.value.code is ErrorCode.TOO_DEEP
    decoder = JsonStreamDecoder(LIMITS)
    decoder.feed(opener * 4)
    with pytest.raises(FramingError):
        decoder.feed(opener)


@pytest.mark.parametrize("max_depth", [1, 2, 3, 4, 5])
def test_depth_limit_on_complete_frames(max_depth: int) -> None:
    """Whatever max_depth is, a frame complete in one feed is checked against it."""
    limits = limits_with(max_depth=max_depth)
    at_limit = b'{"a":' * max_depth + b"1" + b"}" * max_depth
    assert JsonStreamDecoder(limits).feed(at_limit + b"\n") == [at_limit]
    over = b"[" * (max_depth + 1) + b"]" * (max_depth + 1)
    with pytest.raises(FramingError) as caught:
        JsonStreamDecoder(limits).feed(over + b"\n")
    assert caught.value.code is ErrorCode.TOO_DEEP


def test_brackets_in_strings_do_not_count_toward_depth() -> None:
    """Brackets inside strings never count toward the nesting limit."""
    frame = b'{"a":"[[[[[[[[{{{{{{{{"}'
    assert JsonStreamDecoder(LIMITS).feed(frame) == [frame]


def test_first_violation_wins() -> None:
    """A frame already over max_frame when it nests too deep reports FRAME_TOO_LARGE.

    Whatever the chunking, the error is the first violation in the byte stream.
    """
    frame = b'{"pad":"' + b"x" * 80 + b'","a":[[[[[1]]]]]}'
    for chunks in ([frame], bytewise(frame), [frame[:60], frame[60:]]):
        with pytest.raises(FramingError) as caught:
            feed_all(JsonStreamDecoder(LIMITS), *chunks)
        assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


# --- After an error ---------------------------------------------------------------------


def test_decoder_is_spent_after_a_framing_error() -> None:
    """After a FramingError every feed raises again, even of valid data, and nothing is kept."""
    decoder = JsonStreamDecoder(LIMITS)
    with pytest.raises(FramingError) as first:
        decoder.feed(b"[" * 10)
    assert decoder.buffered == 0
    for data in (b"{}\n", b"", CHAT + b"\x00"):
        with pytest.raises(FramingError) as again:
            decoder.feed(data)
        assert again.value is first.value


def test_framing_error_classification() -> None:
    """A FramingError is a ProtocolError that closes the connection and names no request."""
    with pytest.raises(ProtocolError) as caught:
        JsonStreamDecoder(LIMITS).feed(b"[" * 10)
    assert isinstance(caught.value, FramingError)
    assert caught.value.closes_connection
    assert caught.value.request_msgid is None


def test_default_limits() -> None:
    """A default node's limits (``Settings()``) bound frame size and nesting as given."""
    depth = DEFAULTS.max_depth
    decoder = JsonStreamDecoder(DEFAULTS)
    frame = b"[" * depth + b"]" * depth
    assert decoder.feed(frame) == [frame]
    with pytest.raises(FramingError) as caught:
        decoder.feed(b"[" * (depth + 1))
    assert caught.value.code is ErrorCode.TOO_DEEP
    with pytest.raises(FramingError) as too_large:
        JsonStreamDecoder(DEFAULTS).feed(b'"' + b"x" * DEFAULTS.max_frame)
    assert too_large.value.code is ErrorCode.FRAME_TOO_LARGE


# --- Writers ----------------------------------------------------------------------------


def test_ndjson_line() -> None:
    """A modern peer gets the JSON text and a newline."""
    assert ndjson_line(CHAT) == CHAT + b"\n"


def test_classic_frame_fits_the_classic_read_buffer() -> None:
    """A classic frame is the JSON text and a NUL, 1023 bytes at most."""
    largest = b"x" * (CLASSIC_FRAME_MAX - 1)
    assert classic_frame(largest) == largest + b"\x00"
    assert len(classic_frame(largest)) == CLASSIC_FRAME_MAX
    with pytest.raises(ValueError, match="exceeds"):
        classic_frame(largest + b"x")
