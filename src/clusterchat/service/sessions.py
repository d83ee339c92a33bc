"""Sessions on this node, and the registry that maps users to them.

Theory of operation (ARCHITECTURE.md rules 1, 2, 9):

* The transport owns a connection and implements ``Session`` (send bytes,
  close). The service keeps one ``SessionState`` per connection: who is logged
  in on it and which message ids it was recently sent.
* ``SessionRegistry`` maps user id -> that user's logged-in states on this
  node. The first state of a user triggers ``on_first`` (subscribe to the
  user's channel, mark online); the last one leaving triggers ``on_last``.
  Both run under a per-user lock (striped), held across the registry change
  and the awaited backend call, so a quick logout and a new login of the same
  user cannot interleave into "registered but unsubscribed".
* A state is *not ready* between login and its login answer: pushes for it are
  held back in order and released right after the answer, because a classic
  client expects the answer first.
"""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

from clusterchat.protocol import Outbound

__all__ = ["RecentIds", "Session", "SessionRegistry", "SessionState"]


class Session(Protocol):
    """A client connection, as the service sees it (implemented by the transport)."""

    @property
    def peer(self) -> str:
        """Who is at the other end (for logs)."""
        ...

    def send(self, message: Outbound) -> bool:
        """Queue a message for the client.

        Returns:
            False if the session cannot take it: it is closed, or its outbound
            queue is full, in which case it closes itself as a slow consumer.
            The caller must then keep the message for later delivery.
        """
        ...

    def close(self, reason: str) -> None:
        """Close the connection (idempotent)."""


class RecentIds:
    """The last ``size`` message ids sent to one session, to never send one twice."""

    __slots__ = ("_order", "_seen", "_size")

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._order: deque[str] = deque()
        self._seen: set[str] = set()

    def __contains__(self, mid: str) -> bool:
        return mid in self._seen

    def add(self, mid: str) -> bool:
        """Remember ``mid``; False if it was already there."""
        if mid in self._seen:
            return False
        self._seen.add(mid)
        self._order.append(mid)
        if len(self._order) > self._size:
            self._seen.discard(self._order.popleft())
        return True


class SessionState:
    """The service's view of one connection."""

    __slots__ = ("_held", "_refused", "classic", "name", "recent", "session", "user_id")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.user_id: int | None = None
        self.name = ""
        self.recent: RecentIds | None = None
        self._held: list[tuple[str | None, Outbound]] | None = None
        # Set once the session refused a message: it is closing (Session.send),
        # so it takes nothing more, and its ``recent`` ids must not make a drain
        # count a message as had.
        self._refused = False

    @property
    def logged_in(self) -> bool:
        return self.user_id is not None

    @property
    def ready(self) -> bool:
        """Logged in and past the login answer (pushes go straight out)."""
        return self.user_id is not None and self._held is None

    def begin_login(self, user_id: int, name: str) -> None:
        """Become the session of ``user_id``; hold pushes until ``finish_login``."""
        self.user_id = user_id
        self.name = name
        self.recent = RecentIds()
        self._held = []

    def finish_login(self) -> list[tuple[str | None, Outbound]]:
        """Release the pushes held during login.

        Returns:
            The ``(mid, push)`` pairs the session refused (empty if it took them
            all). They were counted as delivered when held, so the caller must
            store them.
        """
        held, self._held = self._held or [], None
        for index, (_, message) in enumerate(held):
            if not self.session.send(message):
                self._refused = True
                return held[index:]
        return []

    def fail_login(self) -> list[tuple[str | None, Outbound]]:
        """The session refused its login answer: it takes nothing more.

        Returns:
            The ``(mid, push)`` pairs held for it, which the caller must store.
        """
        self._refused = True
        held, self._held = self._held or [], None
        return held

    def end(self) -> None:
        self.user_id = None
        self.recent = None
        self._held = None

    def push(self, message: Outbound, mid: str | None) -> bool:
        """Send a chat push at most once per ``mid``.

        Returns:
            True if the session has it (now or earlier), False if it refused
            (now or earlier: a session that refused once takes nothing more).
        """
        if self._refused:
            return False
        recent = self.recent
        if mid is not None and recent is not None and mid in recent:
            return True
        if self._held is not None:
            self._held.append((mid, message))
        elif not self.session.send(message):
            self._refused = True
            return False
        if recent is not None and mid is not None:
            recent.add(mid)
        return True


_STRIPES = 256


class SessionRegistry:
    """user id -> the logged-in ``SessionState``s of that user on this node."""

    def __init__(
        self,
        on_first: Callable[[int], Awaitable[None]],
        on_last: Callable[[int], Awaitable[None]],
    ) -> None:
        self._on_first = on_first
        self._on_last = on_last
        self._by_user: dict[int, set[SessionState]] = {}
        self._locks = [asyncio.Lock() for _ in range(_STRIPES)]

    def __len__(self) -> int:
        return sum(len(states) for states in self._by_user.values())

    def users(self) -> Iterator[int]:
        return iter(list(self._by_user))

    def local(self, user_id: int) -> set[SessionState]:
        """The user's states on this node (empty set if none); do not mutate."""
        return self._by_user.get(user_id, _EMPTY)

    def has(self, user_id: int) -> bool:
        return user_id in self._by_user

    def lock(self, user_id: int) -> asyncio.Lock:
        """The lock serialising registry changes and bus calls for ``user_id``."""
        return self._locks[user_id % _STRIPES]

    async def add(self, state: SessionState) -> None:
        """Register a logged-in state; subscribe if it is the user's first here."""
        user_id = state.user_id
        assert user_id is not None
        async with self.lock(user_id):
            states = self._by_user.get(user_id)
            if states is None:
                self._by_user[user_id] = {state}
                try:
                    await self._on_first(user_id)
                except BaseException:
                    del self._by_user[user_id]
                    raise
            else:
                states.add(state)

    async def remove(self, state: SessionState) -> None:
        """Unregister a state; unsubscribe if it was the user's last here."""
        user_id = state.user_id
        if user_id is None:
            return
        async with self.lock(user_id):
            states = self._by_user.get(user_id)
            if states is None or state not in states:
                return
            states.discard(state)
            if not states:
                del self._by_user[user_id]
                await self._on_last(user_id)


_EMPTY: set[SessionState] = set()
