"""LogWriter: group commit of accepted messages into the log.

``submit`` is synchronous and keeps call order. One task appends what was
submitted as one batch per transaction: everything submitted while a
transaction runs waits for the next one, so under load a batch holds what
arrived during one commit, and a lone message waits for no timer. When a batch
commits, each message's callback runs (the sender's ack, the pushes), in
submission order.

A failing database is retried with back-off; the batch waits in memory and its
senders get no ack meanwhile. ``full`` (the bodies waiting add up to
``max_pending`` bytes) tells the service to stop taking new messages: the
transport then stops reading from the senders (back-pressure, never loss),
so what a node holds for appends is bounded in bytes, whatever the senders
do. Messages not committed when the node dies were never acknowledged: a
sender that retries with its ``cid`` gets them stored once.
"""

import asyncio
import logging
from collections.abc import Callable

from clusterchat.store.base import Appended, MessageLog, NewMessage

__all__ = ["LogWriter"]

log = logging.getLogger("clusterchat.delivery")

Committed = Callable[[Appended], None]


class LogWriter:
    """Appends submitted messages in batches, in order.

    Args:
        store: The log.
        max_batch: Most messages in one transaction.
        max_pending: Bytes of message bodies submitted but not yet committed
            above which ``full`` is True.
    """

    def __init__(self, store: MessageLog, *, max_batch: int, max_pending: int) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._queue: list[tuple[NewMessage, Committed]] = []
        self._pending = 0
        self._task: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._queue)

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
        self._queue.append((message, committed))
        self._pending += len(message.body)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        delay = 0.05
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    results = await self._store.append([message for message, _ in batch])
                except Exception:
                    log.exception("appending %d messages failed; retrying", len(batch))
                    self._queue[:0] = batch
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                delay = 0.05
                self._pending -= sum(len(message.body) for message, _ in batch)
                if not self.full:
                    self._room.set()
                for (_, committed), result in zip(batch, results, strict=True):
                    try:
                        committed(result)
                    except Exception:
                        log.exception("handling a committed message failed")
        finally:
            self._task = None
            self._room.set()
