"""CursorKeeper: writes the cursors of this node's feeds to the store, in batches.

A feed reports that its position may have moved (a classic session wrote a
push, an acknowledging device sent ``Ack``); the keeper remembers the feed
and, ``interval`` seconds after the first report, saves the positions of all
reported feeds in one transaction. When a session ends, its final position is
saved at once (``save_now``), so a node that closes a connection, logs a user
out or shuts down leaves an exact cursor. Only a crash loses the reports of
the last ``interval`` seconds (docs/delivery.md states what that means for
each kind of client). Cursors only move forward in the store.
"""

import asyncio
import logging

from clusterchat.service.feed import Feed
from clusterchat.store.base import MessageLog

__all__ = ["CursorKeeper"]

log = logging.getLogger("clusterchat.delivery")


class CursorKeeper:
    def __init__(self, store: MessageLog, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._dirty: set[Feed] = set()
        self._saved: dict[tuple[int, str], int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def moved(self, feed: Feed) -> None:
        """``feed``'s position may have moved: save it soon."""
        self._dirty.add(feed)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._flush_soon)

    async def save_now(self, feed: Feed) -> None:
        """Save ``feed``'s position now (its session is ending)."""
        self._dirty.discard(feed)
        await self._save([feed])
        self._saved.pop((feed.user_id, feed.key), None)  # keep the cache to live feeds

    async def close(self) -> None:
        """Save everything reported so far."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        dirty, self._dirty = list(self._dirty), set()
        await self._save(dirty)

    def _flush_soon(self) -> None:
        self._timer = None
        dirty, self._dirty = list(self._dirty), set()
        task = asyncio.get_running_loop().create_task(self._save(dirty))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _save(self, feeds: list[Feed]) -> None:
        items: list[tuple[int, str, int]] = []
        for feed in feeds:
            key = (feed.user_id, feed.key)
            pos = feed.position()
            if pos > self._saved.get(key, 0):
                items.append((feed.user_id, feed.key, pos))
        if not items:
            return
        try:
            await self._store.save_cursors(items)
        except Exception:
            log.exception("saving %d cursors failed; they are saved again later", len(items))
            for feed in feeds:
                self.moved(feed)
            return
        for user_id, device, pos in items:
            key = (user_id, device)
            if pos > self._saved.get(key, 0):
                self._saved[key] = pos
