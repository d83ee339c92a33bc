"""LogWriter: batches of the messages submitted within ``linger``, in order, bounded."""

import asyncio
from collections.abc import Sequence

from clusterchat.service.log_writer import LogWriter
from clusterchat.store.base import Appended, NewMessage


class _Log:
    """A message log that records each batch it was asked to append."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def append(self, batch: Sequence[NewMessage]) -> list[Appended]:
        self.batches.append([m.mid for m in batch])
        await asyncio.sleep(0)
        return [Appended(m.mid, n, m.time, m.body, ()) for n, m in enumerate(batch, 1)]


def _message(mid: str) -> NewMessage:
    return NewMessage(mid, 1, "u:1:2", (2,), "t", b"x")


async def _submit_spread(writer: LogWriter, mids: list[str], gap: float) -> list[str]:
    done: list[str] = []
    for mid in mids:
        writer.submit(_message(mid), lambda appended: done.append(appended.mid))
        await asyncio.sleep(gap)
    await writer.flush()
    return done


async def test_messages_within_the_linger_share_one_transaction() -> None:
    log = _Log()
    writer = LogWriter(log, max_batch=100, max_pending=1 << 20, linger=0.2)  # type: ignore[arg-type]
    done = await _submit_spread(writer, ["a", "b", "c", "d"], 0.01)
    assert log.batches == [["a", "b", "c", "d"]]
    assert done == ["a", "b", "c", "d"]


async def test_without_a_linger_each_message_goes_alone_when_the_store_is_idle() -> None:
    log = _Log()
    writer = LogWriter(log, max_batch=100, max_pending=1 << 20, linger=0.0)  # type: ignore[arg-type]
    done = await _submit_spread(writer, ["a", "b", "c"], 0.01)
    assert log.batches == [["a"], ["b"], ["c"]]
    assert done == ["a", "b", "c"]


async def test_a_full_batch_does_not_wait_for_the_linger() -> None:
    log = _Log()
    writer = LogWriter(log, max_batch=3, max_pending=1 << 20, linger=30.0)  # type: ignore[arg-type]
    done: list[str] = []
    for mid in "abcdef":
        writer.submit(_message(mid), lambda appended: done.append(appended.mid))
    await asyncio.wait_for(writer.flush(), 5)
    assert log.batches == [["a", "b", "c"], ["d", "e", "f"]]
    assert done == ["a", "b", "c", "d", "e", "f"]
