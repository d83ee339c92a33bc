"""Delivery: from the log to every session of a recipient, on every node.

Theory of operation (ARCHITECTURE.md delivery rules; docs/delivery.md):

1. A message the service accepted is appended to the log (``LogWriter``);
   each recipient's entry has a position in that user's log.
2. When the append commits, ``committed`` offers the push to the
   recipients' feeds on this node and publishes it for the other nodes: a
   one-to-one message as ``[DELIVER, user, pos, body]`` on the recipient's
   channel, a group message **once**, as ``[GROUP_DELIVER, group, body,
   entries]`` on the group's channel, with every member's position (nodes
   listen on the channels of their users' groups: ``group_channels.py``).
   The publish is the fast path only: its receiver count decides nothing
   about delivery (it tells the sender of a one-to-one message whether the
   recipient was online: ``receivers``), and a failed publish is
   republished until it gets through. At most
   ``MAX_INFLIGHT`` bytes of envelopes are in flight: the rest wait in
   ``_backlog`` as the messages themselves (no envelope built yet) and are
   published, in order, as the bus answers.
3. A node that receives an envelope offers it to the users' feeds here. A
   feed pushes in log order only; a gap (an envelope that overtook another,
   or one lost) makes it read the log (``feed.py``).
4. Whatever the bus may have dropped is read from the log: when the bus comes
   back after an outage or after Redis cut our subscriber, every feed reads
   its log again (``restored``), and every ``sweep_interval`` the node
   compares each local user's log head with its feeds (``sweep``).
"""

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from functools import partial

from clusterchat.bus.base import Bus
from clusterchat.bus.channels import ChannelNames
from clusterchat.protocol import Outbound
from clusterchat.service.background import Background
from clusterchat.service.envelope import (
    encode_deliver,
    encode_group_deliver,
    encode_heads,
    encode_notice,
)
from clusterchat.service.sessions import SessionRegistry
from clusterchat.store.base import Appended, MessageLog

__all__ = ["Delivery", "Receivers"]

log = logging.getLogger("clusterchat.delivery")

_REPUBLISH_DELAY = 0.5
#: Bytes of envelopes published and not yet answered by the bus, at most: a
#: flood of envelopes must wait for Redis instead of piling up in the node
#: (when a group message was one envelope per member, 1,000 messages to 500
#: members took RSS from 454 to 991 MB). Envelopes beyond it are not built
#: until there is room (``_backlog``), and while any wait the node takes no
#: new messages (``full``). Checked per envelope, not per message
#: (tests/unit/service/test_delivery_bound.py).
MAX_INFLIGHT = 8 * 1024 * 1024
#: Users whose log heads (or memberships) one query reads at most.
USERS_PER_QUERY = 500

#: Told how many nodes received a one-to-one message's envelope (each holds a
#: session of its recipient: it is subscribed to the recipient's channel), or
#: None when the publish failed.
Receivers = Callable[[int | None], None]


class Delivery:
    """Routes committed messages to the feeds of this node and, through the bus, of others."""

    def __init__(
        self, node_id: str, registry: SessionRegistry, bus: Bus, store: MessageLog
    ) -> None:
        self._node_id = node_id
        self._registry = registry
        self._bus = bus
        self._store = store
        self._inflight: set[asyncio.Future[int]] = set()
        self._inflight_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        # channel -> user -> the furthest position announced on that channel
        # by a publish that failed (published again as a HEADS envelope).
        self._unsent: dict[str, dict[int, int]] = {}
        self._republish: asyncio.TimerHandle | None = None
        self._restores = Background(log, "the sweep retries")
        # Committed messages (their group, None for none, and who to tell how
        # many nodes received a one-to-one one) whose envelopes are not all
        # published yet, and the index in the first one's positions of the
        # next to publish.
        self._backlog: deque[tuple[Appended, int | None, Receivers | None]] = deque()
        self._next_position = 0

    # --- sending --------------------------------------------------------------------

    def committed(
        self, appended: Appended, group: int | None, receivers: Receivers | None = None
    ) -> None:
        """A message is in the log: push it here, publish it for the other nodes.

        Args:
            appended: The message and its recipients' positions.
            group: The group it was sent to (None: a one-to-one message).
            receivers: For a one-to-one message: called once its envelope is
                published, with the bus's count of receiving nodes.
        """
        push = Outbound(appended.body)
        for user_id, pos in appended.positions:
            self.offer(user_id, pos, push)
        self._backlog.append((appended, group, receivers))
        self._publish_backlog()

    def _publish_backlog(self) -> None:
        """Publish waiting envelopes, in commit order, while the bus has room."""
        backlog = self._backlog
        while backlog and self._inflight_bytes < MAX_INFLIGHT:
            appended, group, receivers = backlog[0]
            positions = appended.positions
            if group is not None:
                envelope = encode_group_deliver(
                    self._node_id, group, _flat(positions), appended.body
                )
                self._publish(ChannelNames.group(group), envelope, positions)
                backlog.popleft()
                continue
            index = self._next_position
            while index < len(positions) and self._inflight_bytes < MAX_INFLIGHT:
                user_id, pos = positions[index]
                envelope = encode_deliver(self._node_id, user_id, pos, appended.body)
                self._publish(ChannelNames.user(user_id), envelope, ((user_id, pos),), receivers)
                index += 1
            if index < len(positions):
                self._next_position = index
                return
            backlog.popleft()
            self._next_position = 0

    def notify(self, user_id: int, push: Outbound) -> None:
        """Send ``push`` to every session of the user, here and on the other nodes.

        Not in the log: a session that misses it (offline, bus down) must learn
        the same from its next login answer.
        """
        self.notice(user_id, push)
        envelope = encode_notice(self._node_id, user_id, push.json)
        future = self._send(ChannelNames.user(user_id), envelope)
        future.add_done_callback(_retrieve)

    def notice(self, user_id: int, push: Outbound) -> None:
        """Send ``push`` to the user's sessions on this node."""
        for state in self._registry.local(user_id):
            state.session.send(push)

    @property
    def full(self) -> bool:
        """So many envelopes wait for the bus that new messages must wait (``room``)."""
        return self._inflight_bytes >= MAX_INFLIGHT or bool(self._backlog)

    async def room(self) -> None:
        """Wait until ``full`` is False."""
        while self.full:
            self._room.clear()
            await self._room.wait()

    def _send(self, channel: str, envelope: bytes) -> asyncio.Future[int]:
        """Publish ``envelope`` on ``channel``, counted in flight until answered."""
        future = self._bus.publish(channel, envelope)
        self._inflight.add(future)
        self._inflight_bytes += len(envelope)
        future.add_done_callback(partial(self._answered, len(envelope)))
        return future

    def _answered(self, size: int, future: asyncio.Future[int]) -> None:
        self._inflight.discard(future)
        self._inflight_bytes -= size
        if self._backlog:
            self._publish_backlog()
        if not self.full:
            self._room.set()

    def _publish(
        self,
        channel: str,
        envelope: bytes,
        positions: tuple[tuple[int, int], ...],
        receivers: Receivers | None = None,
    ) -> None:
        future = self._send(channel, envelope)
        future.add_done_callback(partial(self._published, channel, positions, receivers))

    def _published(
        self,
        channel: str,
        positions: tuple[tuple[int, int], ...],
        receivers: Receivers | None,
        future: asyncio.Future[int],
    ) -> None:
        failed = future.cancelled() or future.exception() is not None
        if failed:
            # Only the fast path failed: the message is in the log. Once the
            # bus works, tell the channel's nodes how far each user's log
            # reached (HEADS), so that none waits for a sweep to read it.
            heads = self._unsent.setdefault(channel, {})
            for user_id, pos in positions:
                if pos > heads.get(user_id, 0):
                    heads[user_id] = pos
            if self._republish is None:
                self._republish = asyncio.get_running_loop().call_later(
                    _REPUBLISH_DELAY, self._republish_unsent
                )
        if receivers is not None:
            receivers(None if failed else future.result())

    def _republish_unsent(self) -> None:
        self._republish = None
        unsent, self._unsent = self._unsent, {}
        for channel, heads in unsent.items():
            reached = tuple(heads.items())
            self._publish(channel, encode_heads(self._node_id, _flat(reached)), reached)

    @property
    def busy(self) -> bool:
        """Publishes in flight or waiting, or a catch-up after a restore running."""
        return bool(self._inflight or self._backlog or self._restores)

    @property
    def unsent(self) -> int:
        """Channels with an announcement waiting to be published again (the bus failed)."""
        return len(self._unsent)

    # --- receiving ------------------------------------------------------------------

    def offer(self, user_id: int, pos: int, push: Outbound) -> None:
        """Entry ``pos`` of ``user_id``'s log: offer it to the user's feeds on this node."""
        for state in self._registry.local(user_id):
            feed = state.feed
            if feed is not None:
                feed.offer(pos, push)

    def offer_entries(self, entries: tuple[int, ...], push: Outbound) -> None:
        """A group message: ``entries`` is ``(user, pos, user, pos, ...)``; offer it here."""
        for user_id, pos in _pairs(entries):
            self.offer(user_id, pos, push)

    def behind(self, entries: tuple[int, ...]) -> None:
        """``(user, pos, ...)``: each user's log reached ``pos``; feeds behind it read it."""
        for user_id, head in _pairs(entries):
            self._reached(user_id, head)

    def _reached(self, user_id: int, head: int) -> None:
        for state in self._registry.local(user_id):
            feed = state.feed
            if feed is not None and head >= feed.next:
                feed.head = max(feed.head, head)
                feed.poke()

    def restored(self) -> None:
        """The bus is back (after an outage or a cut): catch up every local feed, resend failures.

        One query per 500 users finds the feeds that are behind their log's
        head; only those read their log.
        """
        self._restores.start(self.sweep(), "catching up after the bus came back")
        if self._unsent:
            if self._republish is not None:
                self._republish.cancel()
            self._republish_unsent()

    async def sweep(self, users: list[int] | None = None) -> None:
        """Compare local users' log heads with their feeds; fill those behind.

        ``users``: the local users to compare (None: all of them).
        """
        if users is None:
            users = list(self._registry.users())
        for start in range(0, len(users), USERS_PER_QUERY):
            heads = await self._store.heads(users[start : start + USERS_PER_QUERY])
            for user_id, head in heads.items():
                self._reached(user_id, head)

    def broadcast(self, channel: str, payload: bytes) -> "asyncio.Future[int]":
        """Publish a notice that may be lost (cache invalidations); ``close`` waits for it."""
        future = self._bus.publish(channel, payload)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        future.add_done_callback(_retrieve)
        return future

    async def flush(self) -> None:
        """Wait (at most 5 s in all) for the publishes in flight and waiting, then
        (at most 5 s) for a running catch-up. What is not published by then is
        in the log all the same: the other nodes' sweeps find it."""
        deadline = asyncio.get_running_loop().time() + 5
        while self._inflight:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.wait(list(self._inflight), timeout=left)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._restores.wait()

    async def close(self) -> None:
        """Stop publishing again what failed; let publishes in flight complete."""
        if self._republish is not None:
            self._republish.cancel()
            self._republish = None
        await self.flush()


def _retrieve(future: "asyncio.Future[int]") -> None:
    """Take a publish's failure, which may be lost (a notice: see ``notify``;
    a broadcast: its receivers clear their caches when their bus comes back)."""
    if not future.cancelled():
        future.exception()


def _flat(pairs: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """``((user, pos), ...)`` as an envelope's ``entries``: ``(user, pos, user, pos, ...)``."""
    return tuple(item for pair in pairs for item in pair)


def _pairs(entries: tuple[int, ...]) -> "zip[tuple[int, int]]":
    """An envelope's ``entries`` as ``(user, pos)`` pairs (a trailing odd item is ignored)."""
    return zip(entries[::2], entries[1::2], strict=False)
