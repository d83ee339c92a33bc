"""LogWriter: group commit of accepted messages into the log.

``submit`` is synchronous and keeps call order. One task appends what was
submitted as one batch per transaction: everything submitted while a
transaction runs waits for the next one. A batch is appended ``linger``
seconds after its first message was submitted (at once when ``max_batch``
are waiting, or when the previous transaction took that long already), so
at a moderate rate one transaction carries the messages of a few
milliseconds instead of one or two: a transaction's fixed cost (its
statements, its commit, on SQLite the file lock) is paid per batch. With two
nodes on one SQLite file at 2,500 msgs/s, a linger of 3 ms made batches of 8
instead of 2.4 and cut the nodes' CPU from 56% to 43% of a core each
(docs/performance.md). When a batch commits, each message's callback runs
(the sender's ack, the pushes), in submission order.

A failing database is retried with back-off; the batch waits in memory and its
senders get no ack meanwhile. A message costs its body's bytes plus
``ENTRY_COST`` per recipient (the log entry it becomes for each: a group
message to 500 members is 500 entries). ``full`` (the messages waiting cost
``max_pending`` in all) tells the service to stop taking new messages: the
transport then stops reading from the senders (back-pressure, never loss),
so what a node holds for appends is bounded in bytes, whatever the senders
do. Messages not committed when the node dies were never acknowledged: a
sender that retries with its ``cid`` gets them stored once.
"""

import asyncio
import logging
import time
from collections.abc import Callable

from clusterchat.store.base import Appended, MessageLog, NewMessage

__all__ = ["LogWriter"]

#: While appends keep failing, one log line per this many retries (at 2 s apart: a minute).
_REPEAT_EVERY = 30

log = logging.getLogger("clusterchat.delivery")

Committed = Callable[[Appended], None]

#: What one recipient's log entry costs while a message waits and is appended
#: (the row's values as Python objects, and its share of the statement).
ENTRY_COST = 100


def cost(message: NewMessage) -> int:
    """The bytes ``message`` is counted for until it is committed."""
    return len(message.body) + ENTRY_COST * len(message.recipients)


class LogWriter:
    """Appends submitted messages in batches, in order.

    Args:
        store: The log.
        max_batch: Most messages in one transaction (and at most a quarter of
            ``max_pending`` of cost: a batch of big group messages is shorter).
        max_pending: Cost of the messages submitted but not yet committed
            above which ``full`` is True.
        linger: Seconds a batch waits for more messages after its first one.
    """

    def __init__(
        self, store: MessageLog, *, max_batch: int, max_pending: int, linger: float
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._linger = linger
        # When the oldest waiting message arrived (at the latest: the waiting
        # ones arrived after the previous batch was taken).
        self._since = 0.0
        self._queue: list[tuple[NewMessage, Committed]] = []
        self._pending = 0
        self._task: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._appending = 0

    def __len__(self) -> int:
        """Messages submitted and not committed yet (the batch being appended included)."""
        return len(self._queue) + self._appending

    @property
    def full(self) -> bool:
        return self._pending >= self._max_pending

    async def room(self) -> None:
        """Wait until ``full`` is False."""
        while self.full:
            self._room.clear()
            await self._room.wait()

    def submit(self, message: NewMessage, committed: Committed) -> None:
        """Append ``message``; call ``committed`` with the outcome once it is in the log."""
        if not self._queue:
            self._since = time.monotonic()
        self._queue.append((message, committed))
        self._pending += cost(message)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _take(self) -> list[tuple[NewMessage, Committed]]:
        """The next batch: up to ``max_batch`` messages and a quarter of ``max_pending``."""
        budget = self._max_pending // 4
        count = 0
        for message, _ in self._queue[: self._max_batch]:
            budget -= cost(message)
            count += 1
            if budget <= 0:
                break
        batch = self._queue[:count]
        del self._queue[:count]
        self._since = time.monotonic()
        return batch

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        delay = 0.05
        failures = 0
        try:
            while self._queue:
                wait = self._since + self._linger - time.monotonic()
                if wait > 0 and len(self._queue) < self._max_batch:
                    await asyncio.sleep(wait)
                batch = self._take()
                self._appending = len(batch)
                try:
                    results = await self._store.append([message for message, _ in batch])
                except Exception as exc:
                    # One line per failure streak, then one per _REPEAT_EVERY retries:
                    # an outage of the store must not flood the log with tracebacks.
                    if failures % _REPEAT_EVERY == 0:
                        log.warning(
                            "appending %d messages failed (%s: %s, %d times in a row);"
                            " retrying until it works",
                            len(batch),
                            type(exc).__name__,
                            str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                            failures + 1,
                        )
                    failures += 1
                    self._appending = 0
                    self._queue[:0] = batch
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                if failures:
                    log.warning("appending works again after %d failures", failures)
                failures = 0
                delay = 0.05
                self._appending = 0
                self._pending -= sum(cost(message) for message, _ in batch)
                if not self.full:
                    self._room.set()
                for (_, committed), result in zip(batch, results, strict=True):
                    try:
                        committed(result)
                    except Exception:
                        log.exception("handling a committed message failed")
        finally:
            self._task = None
            self._appending = 0
            self._room.set()
