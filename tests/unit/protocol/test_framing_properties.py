"""Property tests of ``JsonStreamDecoder``: chunking never matters, and it fails only as documented.

The oracle is ``ReferenceDecoder``, a byte-at-a-time model of the framing rules
whose result cannot depend on chunking; the fast decoder must agree with it.
"""

import json

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from clusterchat.protocol import ErrorCode, FramingError, JsonStreamDecoder, Limits
from tests.support.defaults import LIMITS, limits_with
from tests.unit.protocol.reference_decoder import ReferenceDecoder
from tests.unit.protocol.strategies import (
    PROTOCOL,
    Json,
    chunked,
    json_objects,
    jsonish_bytes,
    separators,
    stream_bytes,
)

Outcome = tuple[list[bytes], ErrorCode | None, bool]
DEFAULT = LIMITS


def run(
    decoder: JsonStreamDecoder | ReferenceDecoder, chunks: list[bytes], limits: Limits
) -> Outcome:
    """Feed ``chunks`` in order; return the frames received, the error code if any, the NUL flag.

    Anything raised other than ``FramingError`` propagates and fails the test; so
    does a partial frame held beyond ``limits.max_frame`` after a feed.
    """
    frames: list[bytes] = []
    for chunk in chunks:
        try:
            got = decoder.feed(chunk)
        except FramingError as exc:
            return frames, exc.code, decoder.nul_terminated
        assert isinstance(got, list)
        assert all(type(frame) is bytes for frame in got)
        assert decoder.buffered <= limits.max_frame
        frames.extend(got)
    return frames, None, decoder.nul_terminated


def limits_for_fuzzing() -> st.SearchStrategy[Limits]:
    """Small limits, so that size and depth violations happen often."""
    return st.builds(limits_with, max_frame=st.integers(1, 48), max_depth=st.integers(0, 4))


@st.composite
def object_stream(draw: st.DrawFn) -> tuple[list[dict[str, Json]], bytes]:
    """JSON objects, each written compactly or indented, joined by arbitrary separators."""
    objects = draw(st.lists(json_objects(max_depth=DEFAULT.max_depth), max_size=5))
    parts: list[bytes] = []
    for value in objects:
        parts.append(draw(separators()))
        style = draw(st.sampled_from(["msgspec", "ascii", "indent"]))
        if style == "msgspec":
            parts.append(msgspec.json.encode(value))  # raw UTF-8
        elif style == "ascii":
            parts.append(json.dumps(value).encode())  # \\u escapes, spaces after : and ,
        else:
            parts.append(json.dumps(value, indent=1, ensure_ascii=False).encode())
    parts.append(draw(separators()))
    return objects, b"".join(parts)


@PROTOCOL
@given(stream=object_stream(), data=st.data())
def test_objects_come_out_whole_however_chunked(
    stream: tuple[list[dict[str, Json]], bytes], data: st.DataObject
) -> None:
    """Any chunking of JSON objects, byte by byte included, gives the frames of one single feed."""
    objects, raw = stream
    whole = run(JsonStreamDecoder(DEFAULT), [raw], DEFAULT)
    chunks = data.draw(chunked(raw), label="chunks")
    assert run(JsonStreamDecoder(DEFAULT), chunks, DEFAULT) == whole
    assert (
        run(JsonStreamDecoder(DEFAULT), [raw[i : i + 1] for i in range(len(raw))], DEFAULT) == whole
    )
    assert run(ReferenceDecoder(DEFAULT), [raw], DEFAULT) == whole
    frames, error, nul = whole
    assert error is None
    assert [msgspec.json.decode(frame) for frame in frames] == objects
    assert nul == (b"\x00" in raw)


@settings(PROTOCOL, max_examples=PROTOCOL.max_examples * 4)
@given(raw=stream_bytes() | jsonish_bytes(), limits=limits_for_fuzzing(), data=st.data())
@example(raw=b"[" * 10 + b"]" * 10, limits=limits_with(max_frame=5, max_depth=16), data=None)
@example(raw=b'{"aaaaaaaa":{"b":{}}}', limits=limits_with(max_frame=8, max_depth=2), data=None)
@example(raw=b'1\x0b2\x0c{"a":"}"} ', limits=limits_with(max_frame=8, max_depth=2), data=None)
@example(raw=b'[{"a":[1]}]\n', limits=limits_with(max_frame=48, max_depth=2), data=None)
def test_arbitrary_bytes_fail_only_as_documented(
    raw: bytes, limits: Limits, data: st.DataObject | None
) -> None:
    """For any bytes in any chunks: frames or FramingError, and the same outcome as the model.

    Frames completed in the same feed as a violation are lost (documented), so a
    run that fails may have received only a prefix of the frames that the model,
    fed byte by byte, hands out before the violation.
    """
    chunks = [raw] if data is None else data.draw(chunked(raw), label="chunks")
    expected = run(ReferenceDecoder(limits), [raw[i : i + 1] for i in range(len(raw))], limits)
    frames, error, nul = run(JsonStreamDecoder(limits), chunks, limits)
    assert (error, nul) == expected[1:]
    if error is None:
        assert frames == expected[0]
    else:
        assert frames == expected[0][: len(frames)]


@settings(PROTOCOL, max_examples=PROTOCOL.max_examples * 2)
@given(raw=stream_bytes() | jsonish_bytes(), limits=limits_for_fuzzing())
def test_byte_by_byte_matches_the_model_exactly(raw: bytes, limits: Limits) -> None:
    """One byte per feed loses nothing before an error: frames, error and NUL flag all agree."""
    chunks = [raw[i : i + 1] for i in range(len(raw))]
    assert run(JsonStreamDecoder(limits), chunks, limits) == run(
        ReferenceDecoder(limits), chunks, limits
    )


@PROTOCOL
@given(
    raw=stream_bytes(),
    limits=limits_for_fuzzing(),
    more=stream_bytes(max_pieces=5),
    data=st.data(),
)
def test_spent_decoder_keeps_raising(
    raw: bytes, limits: Limits, more: bytes, data: st.DataObject
) -> None:
    """After a FramingError the decoder holds nothing and every further feed raises it again."""
    decoder = JsonStreamDecoder(limits)
    _, code, _ = run(decoder, data.draw(chunked(raw), label="chunks"), limits)
    if code is None:
        return
    assert decoder.buffered == 0
    for extra in (more, b"", b"{}\n"):
        with pytest.raises(FramingError) as again:
            decoder.feed(extra)
        assert again.value.code == code
        assert again.value.closes_connection
