"""Sessions on this node, and the registry that maps users to them.

Theory of operation (ARCHITECTURE.md rules 3, 4, 9):

* The transport owns a connection and implements ``Session``: it queues
  bytes, says whether more pushes may go out now (``writable``: its output
  is below the high-water mark), and counts the bytes it was given
  (``written``) and the bytes the kernel took (``delivered``). It never
  refuses a message: a client that does not read is throttled (pushes wait
  in the log, its requests are not read), never cut for memory.
* The service keeps one ``SessionState`` per connection: who is logged in on
  it, its ``Feed`` (its reader of the user's log), and the answers to its
  chat messages, sent in the order of the messages although some wait for
  the bus (``reserve``/``fill``/``answer``).
* ``SessionRegistry`` maps user id -> that user's logged-in states on this
  node. The first state of a user triggers ``on_first`` (subscribe to the
  user's channel, mark online); the last one leaving triggers ``on_last``.
  Both run under a per-user lock (striped), held across the registry change
  and the awaited backend call, so a quick logout and a new login of the same
  user cannot interleave into "registered but unsubscribed".
"""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from clusterchat.protocol import Outbound

if TYPE_CHECKING:
    from clusterchat.service.feed import Feed

__all__ = ["PendingAnswer", "Session", "SessionRegistry", "SessionState", "WritableWaiters"]


class Session(Protocol):
    """A client connection, as the service sees it (implemented by the transport)."""

    @property
    def peer(self) -> str:
        """Who is at the other end (for logs)."""
        ...

    @property
    def address(self) -> str:
        """The client's network address (host only), for limits per address."""
        ...

    @property
    def closed(self) -> bool:
        """The connection is closed or closing: it takes nothing more."""
        ...

    @property
    def writable(self) -> bool:
        """Output is below the high-water mark: a push may be queued now."""
        ...

    @property
    def written(self) -> int:
        """Bytes queued for the client since the connection opened."""
        ...

    @property
    def delivered(self) -> int:
        """Bytes of ``written`` known to be handed to the kernel (never more than true)."""
        ...

    def send(self, message: Outbound) -> None:
        """Queue a message for the client (ignored once the connection is closed)."""

    async def wait_writable(self) -> bool:
        """Wait until ``writable``; False if the connection closed meanwhile."""
        ...

    def close(self, reason: str) -> None:
        """Close the connection (idempotent)."""


class WritableWaiters:
    """The tasks waiting in a session's ``wait_writable``; for ``Session`` implementations.

    The session calls ``wake(True)`` when it may have become writable and
    ``wake(False)`` when it closed.
    """

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[bool]] = []

    def __bool__(self) -> bool:
        return bool(self._waiters)

    async def wait(self, session: Session) -> bool:
        """Wait until ``session`` is writable; False if it closed meanwhile."""
        while not session.writable:
            if session.closed:
                return False
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            if not await waiter:
                return False
        return True

    def wake(self, value: bool) -> None:
        """Let every waiting task check again (``value`` False: the session closed)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(value)


class PendingAnswer:
    """An answer of a session whose place in order is taken, its text not known yet."""

    __slots__ = ("message",)

    def __init__(self) -> None:
        self.message: Outbound | None = None


class SessionState:
    """The service's view of one connection."""

    __slots__ = ("_waiting", "device", "feed", "name", "refusals", "session", "user_id")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.user_id: int | None = None
        self.name = ""
        self.device: str | None = None
        self.feed: Feed | None = None
        #: Attempts refused on this connection for waiting too little (attempts.py).
        self.refusals = 0
        # Answers reserved and not sent yet, oldest first (None: none; most
        # connections never have one).
        self._waiting: deque[PendingAnswer] | None = None

    def answer(self, message: Outbound) -> None:
        """Send an answer now, or after the answers reserved before it."""
        if self._waiting is None:
            self.session.send(message)
            return
        pending = self.reserve()
        self.fill(pending, message)

    def reserve(self) -> PendingAnswer:
        """Take the next place among this session's answers (``fill`` it later)."""
        if self._waiting is None:
            self._waiting = deque()
        pending = PendingAnswer()
        self._waiting.append(pending)
        return pending

    def fill(self, pending: PendingAnswer, message: Outbound) -> None:
        """Give a reserved answer its text; send every answer ready in order.

        A place filled already keeps its first text."""
        if pending.message is not None:
            return
        pending.message = message
        waiting = self._waiting
        while waiting:
            ready = waiting[0].message
            if ready is None:
                return
            waiting.popleft()
            self.session.send(ready)
        self._waiting = None

    @property
    def logged_in(self) -> bool:
        return self.user_id is not None

    def end(self) -> None:
        """Forget the login (after logout or when the connection ended)."""
        if self.feed is not None:
            self.feed.stop()
        self.user_id = None
        self.device = None
        self.feed = None


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
