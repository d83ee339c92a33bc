"""Feed: one session's reader of its user's log (docs/delivery.md §Feeds).

Theory of operation
===================

Each logged-in session has a feed. ``next`` is the position in the user's log
of the next push the session should get; everything before it was written to
the session (or the session's device had it before). Positions are
consecutive, so comparing is all the bookkeeping there is:

* ``offer(pos, push)`` (a live message, from this node's own commit or from
  the bus): ``pos < next`` -> the session has it, ignore. ``pos == next`` and
  the feed is live and the session writable -> write it, ``next += 1``.
  Otherwise (a gap: ``pos > next``, or the session's output is full, or a
  fill is running) remember ``head = max(head, pos)`` and fill.
* **Fill** (one task at most, only while needed): wait until the session is
  writable, read the log after ``next - 1``, write entries while the session
  stays writable, and repeat until ``next > head`` and nothing more may be in
  the log. Live offers during a fill only raise ``head``, so nothing is
  skipped and nothing overtakes: the log's order is the only order.
* ``poke()``: something may be in the log that no offer announced (the bus
  came back after an outage or a cut, or the periodic sweep saw a newer
  head): read the log once more.

A feed is inactive between login and the login answer (offers only raise
``head``); ``start`` activates it.

What the session has, for its cursor:

* an **acknowledging** device (``device`` given at login) moves its cursor by
  ``Ack``: ``acked``;
* a **classic** session has no acks; its position is what the kernel took:
  ``position()`` compares the session's ``delivered`` byte count with the
  byte offset at which each push ended. Bytes still in the node's buffers when the
  connection dies do not count, so they are pushed again at the next login.
"""

import asyncio
import logging
from collections.abc import Callable

from clusterchat.protocol import Outbound
from clusterchat.service.sessions import Session
from clusterchat.store.base import MessageLog

__all__ = ["CLASSIC_DEVICE", "FEED_TASK", "Feed", "with_cursor"]

log = logging.getLogger("clusterchat.delivery")

#: The device key of the cursor shared by a user's classic sessions.
CLASSIC_DEVICE = ""

#: How the names of the feeds' catch-up tasks begin.
FEED_TASK = "clusterchat-feed"


def with_cursor(body: bytes, pos: int) -> bytes:
    """The push ``body`` (a JSON object) with ``"cursor":pos`` added as its last key."""
    return b'%s,"cursor":%d}' % (body[:-1], pos)


class Feed:
    """One session's position in its user's log, and the task that catches it up.

    Args:
        user_id: Whose log.
        device: The acknowledging device, or None for a classic session.
        session: Where pushes go.
        log: The message log to fill gaps from.
        batch: Entries read per query.
        on_moved: Called (synchronously) when the cursor position may have moved.
    """

    __slots__ = (
        "_batch",
        "_filling",
        "_log",
        "_marks",
        "_must_read",
        "_on_moved",
        "_reading",
        "acked",
        "active",
        "device",
        "handed_base",
        "head",
        "next",
        "session",
        "user_id",
    )

    def __init__(
        self,
        user_id: int,
        device: str | None,
        session: Session,
        log: MessageLog,
        *,
        batch: int,
        on_moved: Callable[["Feed"], None],
    ) -> None:
        self.user_id = user_id
        self.device = device
        self.session = session
        self._log = log
        self._batch = batch
        self._on_moved = on_moved
        self.active = False
        self.next = 1
        self.head = 0
        self.acked = 0
        self.handed_base = 0
        # (bytes written to the session, position) of classic pushes not yet
        # handed to the kernel: a list, not a deque (an empty deque is 624
        # bytes; an idle session's list is empty, 56: docs/performance.md).
        self._marks: list[tuple[int, int]] = []
        self._filling: asyncio.Task[None] | None = None
        self._reading = False
        self._must_read = False

    @property
    def catching_up(self) -> bool:
        """A catch-up task is running (reading the log or waiting for the session)."""
        return self._filling is not None

    @property
    def key(self) -> str:
        """The cursor's device key (``CLASSIC_DEVICE`` for a classic session)."""
        return CLASSIC_DEVICE if self.device is None else self.device

    # --- position -----------------------------------------------------------------

    def begin_at(self, after: int) -> None:
        """Set the starting point: the session has everything up to ``after``."""
        self.next = after + 1
        self.acked = after
        self.handed_base = after

    def mark_written(self, pos: int) -> None:
        """Everything up to ``pos`` was queued on the session just now (login answer)."""
        self.next = pos + 1
        if self.device is None:
            self._marks.append((self.session.written, pos))

    def position(self) -> int:
        """How far the cursor may move: acknowledged, or handed to the kernel."""
        if self.device is not None:
            return self.acked
        delivered = self.session.delivered
        marks = self._marks
        taken = 0
        for written, pos in marks:
            if written > delivered:
                break
            self.handed_base = pos
            taken += 1
        if taken:
            del marks[:taken]
        return self.handed_base

    def ack(self, cursor: int) -> bool:
        """The device acknowledged everything up to ``cursor``; False if it was never sent."""
        if cursor >= self.next:
            return False
        if cursor > self.acked:
            self.acked = cursor
            self._on_moved(self)
        return True

    # --- pushing ------------------------------------------------------------------

    def start(self, *, must_read: bool) -> None:
        """The login answer is out: go live, and catch up if anything may be waiting."""
        self.active = True
        if must_read:
            self._must_read = True
        if self._must_read or self.next <= self.head:
            self._fill_soon()

    def stop(self) -> None:
        """The session ended: no more pushes.

        A catch-up waiting for the session is cancelled; one reading the log
        is left to finish its read (cancelling a database call half-way can
        leave the driver's connection stuck) and stops right after it.
        """
        self.active = False
        if self._filling is not None and not self._reading:
            self._filling.cancel()

    async def stopped(self) -> None:
        """Wait until the catch-up task (if any) has ended, after ``stop``."""
        if self._filling is not None:
            await asyncio.wait([self._filling])

    def offer(self, pos: int, push: Outbound) -> None:
        """A live message at ``pos`` of the user's log."""
        if pos < self.next:
            return
        if pos > self.head:
            self.head = pos
        if (
            pos == self.next
            and self.active
            and self._filling is None
            and not self._must_read
            and self.session.writable
        ):
            self._write(pos, push)
        else:
            self._fill_soon()

    def poke(self) -> None:
        """Entries may be in the log that no offer announced: read it once more."""
        self._must_read = True
        self._fill_soon()

    def _write(self, pos: int, push: Outbound) -> None:
        session = self.session
        if self.device is not None:
            push = Outbound(with_cursor(push.json, pos))
            session.send(push)
        else:
            session.send(push)
            self._marks.append((session.written, pos))
            self._on_moved(self)
        self.next = pos + 1

    def _fill_soon(self) -> None:
        if self.active and self._filling is None and not self.session.closed:
            self._filling = asyncio.get_running_loop().create_task(
                self._fill(), name=f"{FEED_TASK}-{self.user_id}"
            )

    async def _fill(self) -> None:
        try:
            while self.active and (self._must_read or self.next <= self.head):
                self._must_read = False
                if not await self.session.wait_writable() or not self.active:
                    return
                head_before = self.head
                self._reading = True
                try:
                    entries = await self._log.read(self.user_id, self.next - 1, self._batch)
                finally:
                    self._reading = False
                for entry in entries:
                    if entry.pos < self.next:
                        continue
                    if not self.active or not self.session.writable:
                        self._must_read = True  # the rest is read again when writable
                        break
                    if entry.pos > self.head:
                        self.head = entry.pos
                    self._write(entry.pos, Outbound(entry.body))
                if len(entries) == self._batch:
                    self._must_read = True
                elif not entries and not self._must_read and self.head == head_before:
                    # The head is ahead of what this node's reader sees yet
                    # (another node's commit): the next offer or poke retries.
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "reading the log of user %d failed; retrying at the next poke", self.user_id
            )
        finally:
            self._filling = None
