"""Delivery: getting a message to every session of a user, or storing it.

Theory of operation (ARCHITECTURE.md rules 4, 5, 9; docs/delivery.md):

``deliver(user, push)``:
  1. push to the user's sessions on this node (each session drops a message id
     it already had);
  2. PUBLISH the envelope on the user's channel, so the user's sessions on
     other nodes get it (this node ignores its own envelope when it comes back);
  3. when the publish completes: **store** the message for the user if the
     publish failed, or a local session refused it (slow consumer), or nobody
     at all had it (no local session and no other node received it).

A node receiving an envelope pushes it to its local sessions, and stores it if
it has none left (the user logged out meanwhile) or one refused it. So a
message is never dropped: somebody always ends up holding it.

Stored messages go through ``UndeliveredWriter``, one ordered queue written in
batches, and are removed only once a session took them (``drain``). After a
batch is committed, a DRAIN envelope goes to each user's channel: a user who
logged in while the message was on its way to the store gets it at once.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable
from functools import partial

from clusterchat.bus.base import Bus
from clusterchat.protocol import Outbound
from clusterchat.service.envelope import Kind, encode_envelope
from clusterchat.service.sessions import SessionRegistry
from clusterchat.store.base import UndeliveredStore

__all__ = ["Delivery", "UndeliveredWriter", "user_channel"]

log = logging.getLogger("clusterchat.delivery")

_DRAIN_BATCH = 500


def user_channel(user_id: int) -> str:
    return f"user:{user_id}"


class UndeliveredWriter:
    """An ordered write-behind queue into the undelivered store.

    ``add`` is synchronous and keeps call order; one task writes batches.
    A failing database is retried with back-off; nothing is dropped (the queue
    lives in memory until the database is back or the node stops).
    """

    def __init__(self, store: UndeliveredStore, on_stored: Callable[[set[int]], None]) -> None:
        self._store = store
        self._on_stored = on_stored
        self._queue: list[tuple[int, str, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, user_id: int, mid: str, payload: bytes) -> None:
        self._queue.append((user_id, mid, payload))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Wait until everything added so far is committed."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        delay = 0.05
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._store.store_messages(batch)
                except Exception:
                    log.exception("storing %d undelivered messages failed; retrying", len(batch))
                    self._queue[:0] = batch
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.05
                self._on_stored({user_id for user_id, _, _ in batch})
        finally:
            self._task = None


class Delivery:
    """Routes pushes to users: local sessions, the bus, the undelivered store."""

    def __init__(
        self,
        node_id: str,
        registry: SessionRegistry,
        bus: Bus,
        store: UndeliveredStore,
    ) -> None:
        self._node_id = node_id
        self._registry = registry
        self._bus = bus
        self._store = store
        self.writer = UndeliveredWriter(store, self._stored)
        self._inflight: set[asyncio.Future[int]] = set()
        self._drains: set[asyncio.Task[None]] = set()

    # --- sending --------------------------------------------------------------------

    def deliver(self, user_id: int, push: Outbound, mid: str, envelope: bytes) -> None:
        """Deliver ``push`` (with its bus ``envelope``) to every session of ``user_id``.

        Returns at once; storing, if needed, happens when the publish completes.
        """
        local, refused = self._push_local(user_id, push, mid)
        subscribed_here = self._registry.has(user_id)
        future = self._bus.publish(user_channel(user_id), envelope)
        self._inflight.add(future)
        future.add_done_callback(
            partial(self._published, user_id, mid, push.json, local, refused, subscribed_here)
        )

    def _published(
        self,
        user_id: int,
        mid: str,
        body: bytes,
        local: bool,
        refused: bool,
        subscribed_here: bool,
        future: asyncio.Future[int],
    ) -> None:
        self._inflight.discard(future)
        if future.cancelled():
            failed = True
        elif (exc := future.exception()) is not None:
            log.warning("publish to user %d failed (%s); storing %s", user_id, exc, mid)
            failed = True
        else:
            failed = False
            others = future.result() - (1 if subscribed_here else 0)
            if not local and others <= 0:
                failed = True
        if failed or refused:
            self.writer.add(user_id, mid, body)

    def _push_local(self, user_id: int, push: Outbound, mid: str) -> tuple[bool, bool]:
        delivered = refused = False
        for state in tuple(self._registry.local(user_id)):
            if state.push(push, mid):
                delivered = True
            else:
                refused = True
        return delivered, refused

    # --- receiving ------------------------------------------------------------------

    def received(self, user_id: int, mid: str, body: bytes, *, own: bool = False) -> None:
        """An envelope for ``user_id`` from the bus: push it locally, or store it.

        ``own`` marks this node's own publication coming back: ``deliver`` already
        decided whether to store it (``_published``), so it is pushed, never stored
        a second time.
        """
        delivered, refused = self._push_local(user_id, Outbound(body), mid)
        if not own and (refused or not delivered):
            self.writer.add(user_id, mid, body)

    def broadcast(self, channel: str, payload: bytes) -> None:
        """Publish a notice that may be lost (cache invalidations); never stored."""
        self._bus.publish(channel, payload).add_done_callback(_ignore_result)

    # --- draining -------------------------------------------------------------------

    def _stored(self, user_ids: set[int]) -> None:
        notice = encode_envelope(Kind.DRAIN, self._node_id)
        for user_id in user_ids:
            self.broadcast(user_channel(user_id), notice)
        # A user whose sessions are all still logging in gets these in the login answer.
        local = [uid for uid in user_ids if any(state.ready for state in self._registry.local(uid))]
        if local:
            self.spawn_drain(local)

    def spawn_drain(self, user_ids: Iterable[int]) -> None:
        """Drain in the background (used by bus callbacks, which must not block)."""
        task = asyncio.get_running_loop().create_task(self.drain(list(user_ids)))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        task.add_done_callback(_log_failure)

    async def drain(self, user_ids: Iterable[int]) -> None:
        """Push every stored message of these users to their sessions here; remove those taken.

        Messages of users who have no session here (any more), or whose session
        refused them, stay stored.
        """
        ids = [uid for uid in user_ids if self._registry.has(uid)]
        for start in range(0, len(ids), _DRAIN_BATCH):
            chunk = ids[start : start + _DRAIN_BATCH]
            after = 0
            while True:
                rows = await self._store.pending(chunk, _DRAIN_BATCH, after)
                if not rows:
                    break
                taken = []
                for row in rows:
                    delivered, refused = self._push_local(
                        row.user_id, Outbound(row.payload), row.mid
                    )
                    if delivered and not refused:
                        taken.append(row.seq)
                await self._store.remove(taken)
                after = rows[-1].seq
                if len(rows) < _DRAIN_BATCH:
                    break

    async def close(self) -> None:
        """Let publishes in flight complete (and store what failed), then flush the store."""
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=5)
        if self._drains:
            await asyncio.wait(list(self._drains), timeout=5)
        await self.writer.flush()


def _ignore_result(future: asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("draining undelivered messages failed", exc_info=exc)
