"""Time ``JsonStreamDecoder.feed`` on chat traffic and print microseconds per frame.

Run with ``.venv/bin/python benchmarks/decoder_speed.py``. Each scenario feeds the
same bytes to a fresh decoder several times and reports the best run in CPU time
of this process, so the figure is the decoder's own cost rather than the noise of
a shared machine. Numbers are for comparing versions on one machine; no test
asserts on them.
"""

import time
from collections.abc import Callable

from clusterchat.protocol import JsonStreamDecoder, Limits
from clusterchat.settings import Settings

__all__ = ["main"]

CHAT = (
    b'{"id":12,"msg":"hello there my friend 1234567890","msgid":6,'
    b'"name":"alice","time":"2026-11-25 10:00:00","toid":13}'
)
LOGIN_ACK = (
    b'{"errno":0,"friends":["{\\"id\\":2,\\"name\\":\\"bob\\",\\"state\\":\\"online\\"}",'
    b'"{\\"id\\":3,\\"name\\":\\"carol\\",\\"state\\":\\"offline\\"}"],'
    b'"groups":["{\\"groupdesc\\":\\"d\\",\\"groupname\\":\\"g\\",\\"id\\":1,\\"users\\":[]}"],'
    b'"id":1,"msgid":2,"name":"alice"}'
)
FRAMES_PER_FEED = 100
FEEDS = 200
ESCAPED = b'{"msg":"say \\"hi\\" {x} [y] \\\\ \\u4e2d","msgid":6,"toid":13}'
REPEATS = 7
#: A default node's limits.
LIMITS = Settings().pick(Limits)


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _time_per_frame(feeds: list[bytes], frames_expected: int) -> float:
    """Best time over ``REPEATS`` runs of feeding ``feeds`` to a fresh decoder, in µs/frame."""
    best = float("inf")
    for _ in range(REPEATS):
        decoder = JsonStreamDecoder(LIMITS)
        feed: Callable[[bytes], list[bytes]] = decoder.feed
        count = 0
        began = time.process_time()
        for data in feeds:
            count += len(feed(data))
        elapsed = time.process_time() - began
        if count != frames_expected:
            raise RuntimeError(f"decoded {count} frames, expected {frames_expected}")
        best = min(best, elapsed)
    return best / frames_expected * 1e6


def main() -> None:
    """Print one line per scenario: its name and the decoder's cost per frame."""
    classic_batch = (CHAT + b"\x00") * FRAMES_PER_FEED
    ndjson_batch = (CHAT + b"\n") * FRAMES_PER_FEED
    total = FRAMES_PER_FEED * FEEDS
    scenarios: list[tuple[str, list[bytes], int]] = [
        ("classic NUL frames, 100 per feed", [classic_batch] * FEEDS, total),
        ("NDJSON lines, 100 per feed", [ndjson_batch] * FEEDS, total),
        ("classic NUL frames, one per feed", [CHAT + b"\x00"] * total, total),
        ("classic NUL frames in 1460-byte segments", _chunks(classic_batch * FEEDS, 1460), total),
        (
            "chat with escapes and brackets, 100 per feed",
            [(ESCAPED + b"\x00") * 100] * FEEDS,
            total,
        ),
        ("login answers (nested), 100 per feed", [(LOGIN_ACK + b"\n") * 100] * FEEDS, total),
        ("classic NUL frames, 7 bytes per feed", _chunks(classic_batch * 10, 7), 1000),
    ]
    print(f"chat frame: {len(CHAT) + 1} bytes with its NUL")
    for name, feeds, frames in scenarios:
        print(f"{name:<46} {_time_per_frame(feeds, frames):6.2f} µs/frame")


if __name__ == "__main__":
    main()
