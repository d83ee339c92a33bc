"""Fixture plugin: in-process chat nodes and recording clients for the service tests.

A ``ChatCluster`` (fixture ``chat_cluster``) is one test's little cluster: a
shared ``LocalHub`` (the bus), a shared ``LocalPresence`` and one SQLite file
(``redis_chat_cluster``: a real redis-server instead of the ``LocalHub``, for
tests/integration).
``await chat_cluster.node()`` starts a ``ChatService`` on its own ``SqlStore``
engine over that file, as a separate node process would. Every node's store
is an ``InstrumentedStore``: the real ``SqlStore`` behind a proxy that counts
calls and can hold a method at a gate, for tests about query counts and
interleavings. Nothing here mocks a backend.

A ``RecordingSession`` is a client stand-in: it implements the service's
``Session`` protocol, decodes and keeps everything the service sends, and can
stop reading (``stalled``: not writable, like a full socket) like a slow
client. Everything it records counts as handed to the kernel. ``Client``
pairs one with its node and ``SessionState``.

Waiting: ``settle`` waits until the nodes are quiet (publishes completed, the
log writer flushed, feeds caught up), polling the event loop's tasks against a
deadline built from ``seconds()``; tests never sleep to synchronise.
"""

import asyncio
import contextlib
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest

from clusterchat.bus.base import Bus, BusError
from clusterchat.bus.local import LocalBus, LocalHub
from clusterchat.bus.redis import RedisBus
from clusterchat.presence.local import LocalPresence
from clusterchat.protocol import (
    AddFriend,
    AddFriendAck,
    Login,
    LoginAck,
    Outbound,
    RegAck,
    Register,
    Request,
    ServerMessage,
    decode_server_message,
)
from clusterchat.service.chat import SWEEPER_TASK, ChatService
from clusterchat.service.context import Policy
from clusterchat.service.feed import FEED_TASK
from clusterchat.service.passwords import PasswordHasher
from clusterchat.service.sessions import SessionState, WritableWaiters
from clusterchat.store.base import (
    Appended,
    Friendship,
    Group,
    LogEntry,
    Member,
    NewMessage,
    Store,
    User,
)
from clusterchat.store.sql import SqlStore
from tests.support.database import migrated
from tests.support.defaults import LIMITS, SETTINGS, cheap_passwords, policy_with
from tests.support.redis import RedisServer
from tests.support.timing import seconds

__all__ = [
    "PASSWORD",
    "ChatCluster",
    "ChatNode",
    "Client",
    "Gate",
    "InstrumentedStore",
    "RecordingSession",
    "chat_cluster",
    "local_chat_cluster",
    "redis_chat_cluster",
    "run",
    "settle",
    "until",
]

#: The password every test user gets unless a test says otherwise.
PASSWORD = "secret"

M = TypeVar("M")

_peers = itertools.count(1)


# --- a client stand-in ---------------------------------------------------------------------


class RecordingSession:
    """Implements ``Session``: records what the service sends, decoded.

    Attributes:
        peer: A name for logs.
        address: The client's address (limits per address).
        raw: Every message as the JSON bytes the service encoded.
        received: The same messages, decoded as a client would.
        closed_reason: Why the session closed, or None while open.
    """

    def __init__(self, peer: str | None = None, address: str = "192.0.2.1") -> None:
        self.peer = peer or f"test-peer-{next(_peers)}"
        self.address = address
        self.raw: list[bytes] = []
        self.received: list[ServerMessage] = []
        self.closed_reason: str | None = None
        self._stalled = False
        self._written = 0
        self._waiters = WritableWaiters()

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    @property
    def writable(self) -> bool:
        return not self.closed and not self._stalled

    @property
    def written(self) -> int:
        return self._written

    @property
    def delivered(self) -> int:
        return self._written

    def stall(self, stalled: bool = True) -> None:
        """Stop (or resume) taking pushes, like a client that does not read."""
        self._stalled = stalled
        if not stalled:
            self._waiters.wake(True)

    async def wait_writable(self) -> bool:
        return await self._waiters.wait(self)

    def send(self, message: Outbound) -> None:
        """Record ``message`` (ignored once closed)."""
        if self.closed:
            return
        self.raw.append(message.json)
        self._written += len(message.json)
        self.received.append(decode_server_message(message.json))

    def close(self, reason: str) -> None:
        """Close (idempotent); later sends are ignored."""
        if self.closed_reason is None:
            self.closed_reason = reason
            self._waiters.wake(False)

    def of_type(self, kind: type[M]) -> list[M]:
        """The received messages of one type, in order."""
        return [message for message in self.received if isinstance(message, kind)]

    def clear(self) -> None:
        """Forget what was received so far."""
        self.raw.clear()
        self.received.clear()


# --- an instrumented real store ------------------------------------------------------------


class Gate:
    """Holds calls of one store method until released."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.opened = asyncio.Event()

    async def reached(self) -> None:
        """Wait until a call is held at the gate."""
        async with asyncio.timeout(seconds(5)):
            await self.arrived.wait()

    def release(self) -> None:
        """Let held and later calls through."""
        self.opened.set()


class InstrumentedStore:
    """A ``Store`` that delegates to a real one, counting calls and honouring gates.

    Attributes:
        inner: The real store.
        calls: How many times each method was called.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._gates: dict[str, Gate] = {}

    @property
    def total(self) -> int:
        """Calls of every method so far."""
        return sum(self.calls.values())

    def hold(self, method: str) -> Gate:
        """Hold the next calls of ``method`` until the returned gate is released."""
        gate = self._gates[method] = Gate()
        return gate

    async def _enter(self, method: str) -> None:
        self.calls[method] += 1
        gate = self._gates.get(method)
        if gate is not None:
            gate.arrived.set()
            await gate.opened.wait()

    async def close(self) -> None:
        await self.inner.close()

    async def create_user(
        self, name: str, password_hash: str, *, name_key: str | None = None
    ) -> int:
        await self._enter("create_user")
        return await self.inner.create_user(name, password_hash, name_key=name_key)

    async def get_user(self, user_id: int) -> User | None:
        await self._enter("get_user")
        return await self.inner.get_user(user_id)

    async def add_friendship(self, user_id: int, friend_id: int) -> bool:
        await self._enter("add_friendship")
        return await self.inner.add_friendship(user_id, friend_id)

    async def friends_of(self, user_id: int) -> list[User]:
        await self._enter("friends_of")
        return await self.inner.friends_of(user_id)

    async def request_friendship(self, from_id: int, to_id: int) -> Friendship:
        await self._enter("request_friendship")
        return await self.inner.request_friendship(from_id, to_id)

    async def friend_requests_to(self, user_id: int) -> list[User]:
        await self._enter("friend_requests_to")
        return await self.inner.friend_requests_to(user_id)

    async def create_group(
        self,
        name: str,
        description: str,
        creator_id: int,
        *,
        name_key: str | None = None,
        invite_only: bool = False,
    ) -> int:
        await self._enter("create_group")
        return await self.inner.create_group(
            name, description, creator_id, name_key=name_key, invite_only=invite_only
        )

    async def invite(self, group_id: int, user_id: int) -> None:
        await self._enter("invite")
        await self.inner.invite(group_id, user_id)

    async def invited(self, group_id: int, user_id: int) -> bool:
        await self._enter("invited")
        return await self.inner.invited(group_id, user_id)

    async def get_group(self, group_id: int) -> Group | None:
        await self._enter("get_group")
        return await self.inner.get_group(group_id)

    async def add_member(self, group_id: int, user_id: int, role: str = "normal") -> bool:
        await self._enter("add_member")
        return await self.inner.add_member(group_id, user_id, role)

    async def members(self, group_id: int) -> list[Member]:
        await self._enter("members")
        return await self.inner.members(group_id)

    async def groups_of(self, user_id: int) -> list[tuple[Group, list[Member]]]:
        await self._enter("groups_of")
        return await self.inner.groups_of(user_id)

    async def memberships(self, user_ids: Iterable[int]) -> dict[int, list[int]]:
        await self._enter("memberships")
        return await self.inner.memberships(user_ids)

    async def append(self, batch: Sequence[NewMessage]) -> list[Appended]:
        await self._enter("append")
        return await self.inner.append(batch)

    async def read(self, user_id: int, after: int, limit: int) -> list[LogEntry]:
        await self._enter("read")
        return await self.inner.read(user_id, after, limit)

    async def heads(self, user_ids: Iterable[int]) -> dict[int, int]:
        await self._enter("heads")
        return await self.inner.heads(user_ids)

    async def load_cursors(self, user_id: int) -> dict[str, int]:
        await self._enter("load_cursors")
        return await self.inner.load_cursors(user_id)

    async def save_cursors(self, items: Sequence[tuple[int, str, int]]) -> None:
        await self._enter("save_cursors")
        await self.inner.save_cursors(items)


_: type[Store] = InstrumentedStore


# --- driving the service -------------------------------------------------------------------


async def run(service: ChatService, state: SessionState, request: Request) -> None:
    """Handle one request as the transport does: await the coroutine if one comes back."""
    pending = service.handle(state, request)
    if pending is not None:
        await pending


async def settle(
    services: Iterable[ChatService], *, ignore: Iterable["asyncio.Task[object]"] = ()
) -> None:
    """Wait until the nodes are quiet: publishes done, messages stored, drains finished.

    Args:
        services: The nodes to flush.
        ignore: Tasks the test itself keeps pending (e.g. a login held at a gate).

    Raises:
        AssertionError: something is still running after the deadline.
    """
    nodes = list(services)
    skip = set(ignore)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds(5)
    while True:
        for service in nodes:
            await service.ctx.delivery.flush()
        bus_up: dict[ChatService, bool] = {}
        for service in nodes:
            # Everything published so far has reached the handlers (RedisBus: a
            # round trip through Redis). A bus that is down has nothing to bring.
            try:
                await service.ctx.bus.barrier()
                bus_up[service] = True
            except BusError:
                bus_up[service] = False
        current = asyncio.current_task()
        busy = {
            t
            for t in asyncio.all_tasks()
            if t is not current
            and t not in skip
            and t.get_name() != SWEEPER_TASK
            and not t.get_name().startswith(_RESIDENT_TASKS)
        }
        # A feed still catching up a session that can take pushes is work in progress;
        # one waiting for a stalled session is as quiet as it gets.
        catching_up = any(
            state.feed is not None and state.feed.catching_up and state.session.writable
            for s in nodes
            for user_id in s.registry.users()
            for state in s.registry.local(user_id)
        )
        # Announcements waiting to be published again count only while the bus is up.
        pending = any(
            len(s.ctx.writer) or s.ctx.delivery.busy or (bus_up[s] and s.ctx.delivery.unsent)
            for s in nodes
        )
        if not busy and not catching_up and not pending:
            return
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"nodes did not settle: {busy}")
        if busy:
            await asyncio.wait(busy, timeout=remaining)
        else:
            await asyncio.sleep(0.001)  # a writer batch or a feed's read is on its way


@dataclass
class Client:
    """One connection to a node: the recording session and the service's state for it."""

    node: "ChatNode"
    session: RecordingSession
    state: SessionState

    async def send(self, request: Request) -> None:
        """Send one request and wait until the node has handled it."""
        await run(self.node.service, self.state, request)

    async def login(
        self, user_id: int, password: str = PASSWORD, *, device: str | None = None
    ) -> LoginAck:
        """Log in; return the login answer."""
        await self.send(Login(id=user_id, password=password, device=device))
        answers = self.session.of_type(LoginAck)
        assert answers, "no login answer"
        return answers[-1]

    async def close(self) -> None:
        """The connection ends (as when the transport sees it close)."""
        self.session.close("client went away")
        await self.node.service.closed(self.state)


@dataclass
class ChatNode:
    """A node of the test cluster."""

    service: ChatService
    store: InstrumentedStore
    bus: Bus

    def connect(self) -> Client:
        """Open a new connection to this node."""
        session = RecordingSession()
        return Client(self, session, self.service.open(session))

    async def login(
        self, user_id: int, password: str = PASSWORD, *, device: str | None = None
    ) -> Client:
        """Open a connection and log ``user_id`` in on it (asserting success)."""
        client = self.connect()
        ack = await client.login(user_id, password, device=device)
        assert ack.errno == 0, ack
        return client

    async def register(self, name: str, password: str = PASSWORD) -> int:
        """Register a user over a throwaway connection; return the new id."""
        client = self.connect()
        await client.send(Register(name=name, password=password))
        ack = client.session.of_type(RegAck)[-1]
        assert ack.errno == 0, ack
        assert ack.id is not None
        await client.close()
        return ack.id

    async def befriend(self, a: int, b: int) -> None:
        """Make ``a`` and ``b`` friends: a asks, b asks back (consent), on throwaway logins."""
        for asker, other in ((a, b), (b, a)):
            client = await self.login(asker)
            await client.send(AddFriend(friendid=other))
            ack = client.session.of_type(AddFriendAck)[-1]
            assert ack.errno == 0, ack
            await client.close()


@dataclass
class ChatCluster:
    """Nodes sharing one bus, one presence and one database file.

    The bus is a ``LocalHub`` shared by ``LocalBus`` instances, or, when
    ``redis`` is given, a real redis-server that every node's ``RedisBus``
    talks to (with a prefix of this cluster's own).
    """

    db_url: str
    redis: RedisServer | None = None
    hub: LocalHub = field(default_factory=LocalHub)
    prefix: str = field(default_factory=lambda: f"test{uuid.uuid4().hex[:12]}")
    presence: LocalPresence = field(default_factory=lambda: LocalPresence("local", ""))
    passwords: PasswordHasher = field(default_factory=cheap_passwords)
    nodes: list[ChatNode] = field(default_factory=list)

    async def node(self, policy: Policy | None = None) -> ChatNode:
        """Start one more node (its own SqlStore engine on the shared file).

        Args:
            policy: The node's policy; default: a default node's
                (``tests.support.defaults.policy_with()``).
        """
        # Building an engine resolves the file path (os.path.abspath): done once, at
        # start-up, off the loop so that blockbuster watches only the serving path.
        if not self.nodes:
            await asyncio.to_thread(migrated, self.db_url)
        store = InstrumentedStore(
            await asyncio.to_thread(
                partial(
                    SqlStore,
                    self.db_url,
                    pool_size=SETTINGS.db_pool_size,
                    lock_timeout=SETTINGS.db_lock_timeout,
                )
            )
        )
        bus: Bus
        node_id = f"n{len(self.nodes) + 1}"
        if self.redis is None:
            bus = LocalBus(self.hub)
        else:
            bus = RedisBus(
                self.redis.url,
                node_id=node_id,
                prefix=self.prefix,
                probe_interval=0.2,
                probe_timeout=0.5,
                publish_timeout=0.5,
                connect_timeout=0.5,
                backoff_base=0.05,
                backoff_cap=0.2,
            )
        service = ChatService(
            node_id=node_id,
            store=store,
            bus=bus,
            presence=self.presence,
            passwords=self.passwords,
            limits=LIMITS,
            policy=policy_with() if policy is None else policy,
        )
        await service.start()
        node = ChatNode(service, store, bus)
        self.nodes.append(node)
        return node

    async def settle(self, *, ignore: Iterable["asyncio.Task[object]"] = ()) -> None:
        """``settle`` every node of the cluster."""
        await settle((n.service for n in self.nodes), ignore=ignore)

    async def outage(self) -> None:
        """The bus goes down: every publish fails (the redis-server is stopped)."""
        if self.redis is None:
            self.hub.down = True
            return
        await asyncio.to_thread(self.redis.stop)
        await until(lambda: not any(_redis_bus(n).connected for n in self.nodes), "outage")

    async def restore(self) -> None:
        """The bus comes back: each node resubscribes and reads its users' logs."""
        if self.redis is None:
            self.hub.down = False
            for node in self.nodes:
                assert isinstance(node.bus, LocalBus)
                node.bus.restore()
            return
        before = [_redis_bus(n).restores for n in self.nodes]
        await asyncio.to_thread(self.redis.start)
        await until(
            lambda: all(
                _redis_bus(n).restores > b for n, b in zip(self.nodes, before, strict=True)
            ),
            "every node's bus restored",
        )

    async def log_of(self, user_id: int) -> list[LogEntry]:
        """The user's log (read directly)."""
        return await self.nodes[0].store.inner.read(user_id, 0, 100_000)

    async def close(self) -> None:
        """Shut every node down, then release the databases."""
        self.hub.down = False
        for node in self.nodes:
            await node.service.shutdown()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                await node.bus.close()
            await node.store.close()


#: Tasks that live as long as a node (or wait for a stalled session): never "busy".
_RESIDENT_TASKS = (FEED_TASK, "redisbus-", "redis-publisher")


def _redis_bus(node: ChatNode) -> RedisBus:
    assert isinstance(node.bus, RedisBus)
    return node.bus


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds (for states that signal no event).

    Raises:
        AssertionError: naming ``what``, if it does not hold within 10 s (scaled).
    """
    try:
        async with asyncio.timeout(seconds(10)):
            while not condition():  # noqa: ASYNC110 - nothing to wait on but the state
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not reached in time: {what}") from None


@pytest.fixture
async def chat_cluster(tmp_path: Path) -> AsyncIterator[ChatCluster]:
    """An empty test cluster on the in-process bus.

    tests/integration/test_service_on_redis.py runs every test that takes this
    fixture again, with a cluster on a real redis-server (``redis_chat_cluster``).
    """
    cluster = ChatCluster(db_url=f"sqlite:///{tmp_path}/chat.db")
    yield cluster
    await cluster.close()


@pytest.fixture
async def redis_chat_cluster(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[ChatCluster]:
    """An empty test cluster whose nodes talk through a real redis-server."""
    cluster = ChatCluster(db_url=f"sqlite:///{tmp_path}/chat.db", redis=redis_server)
    yield cluster
    await cluster.close()


@pytest.fixture
async def local_chat_cluster(tmp_path: Path) -> AsyncIterator[ChatCluster]:
    """A test cluster on the in-process bus only, for tests that inject its faults by hand."""
    cluster = ChatCluster(db_url=f"sqlite:///{tmp_path}/chat.db")
    yield cluster
    await cluster.close()
