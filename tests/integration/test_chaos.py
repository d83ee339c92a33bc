"""Chaos: many clients on three nodes behind nginx exchange messages while everything fails.

What it proves (docs/protocol.md §3, ARCHITECTURE.md "Delivery rules"): every
message the server acknowledged reaches every recipient device exactly once and
in the log's order, while nodes are SIGKILLed, SIGSTOPped, SIGTERMed and
restarted, redis-server is killed and restarted, and Redis cuts a stalled
node's subscriber for its pubsub output buffer.

Design
------
* A cluster of real processes: redis-server, three ``clusterchat node`` (one
  SQLite file; with ``CLUSTERCHAT_CHAOS_DB=postgresql`` or ``mariadb``, a
  private server of that database), nginx in front (with a stream access log, so that every
  connection can be mapped to the node that served it).
* ``USERS`` users, half *classic* (NUL-terminated frames, no device: their
  stored messages come in ``offlinemsg``) and half *acknowledging* (newline
  frames, ``device`` + automatic coalesced ``Ack``, reconnecting with
  ``after=`` their last cursor). Each user is one ``Agent``: one connection at a
  time through nginx, a reader recording every push and a sender. ``GROUPS``
  groups mix both kinds.
* Senders send one message at a time (so send order is log order), each with a
  ``ref`` and a ``cid``, waiting for the acknowledgement; 30% go to a group.
  The offered rate is paced globally to spread ``CLUSTERCHAT_CHAOS_MESSAGES``
  over ``CLUSTERCHAT_CHAOS_SECONDS``. A sender whose connection dies reconnects
  (bounded retries, through nginx) and sends the unacknowledged message again
  with the same ``cid``. An acknowledging client also gives up a connection
  that leaves a message unacknowledged too long (safe: it resumes with
  ``after``); a classic client never gives up a connection itself, as the bytes
  in the kernel buffers of a connection it dropped would be its own loss.
* Faults come from a seeded schedule (order, target node, durations), one at a
  time with pauses between, cycling until the traffic is done (at least one
  full cycle): SIGKILL a node and restart it, SIGSTOP/SIGCONT a node, SIGTERM a
  node and restart it, SIGKILL redis-server and restart it (same port, empty),
  and the buffer cut: ``CONFIG SET client-output-buffer-limit "pubsub 64kb 32kb
  1"``, SIGSTOP a node while traffic flows until Redis logs that it closed a
  client for its output buffer, SIGCONT, restore the limit. The kernel's socket
  buffers take megabytes before Redis' own buffer grows, so a *flooder* (one
  more user, connected straight to another node) sends 7 KB messages to a
  *victim* (an acknowledging user logged in straight on the stalled node; one
  per node) until the cut; both are checked like everyone else. The nodes
  share one SQLite file: a node stopped inside a write transaction stops every
  commit, and then nothing is published and nothing can be cut; the buffer cut
  then continues the node and stops it again a moment later.
* After the traffic and the faults, wait (bounded) until every user is logged
  in and every acknowledged message has reached each of its recipients, then
  a little longer for late repeats, and check.

What is counted
---------------
A message is identified by its text ``<sender>:<n>:...``. For every
acknowledged message and each recipient (the ``toid``, or every member of the
group but the sender): *lost* if the recipient never received it; a
*duplicate* if an acknowledging device received it twice (after its client
library dropped the pushes whose cursor it had already passed on: exactly
once as the user sees it), or a classic client twice in one session, or again
in a later session when the session that had it did not end by a SIGKILL of
its node. The protocol allows that one repeat (a classic cursor is persisted
just after the write) and it is counted apart, as
``classic_repeats_after_sigkill``; a node stopped with SIGTERM closes its
connections itself and saves exact cursors, so nothing may be repeated after
it. Which node served a session comes from nginx's access log. *reordered* when it
arrives after a later one of the same conversation: per sender and recipient
(the sender's counter) and per group (the ``seq`` of its acknowledgement).
Also checked: pushes carry the real sender and target, the ``mid`` a
recipient saw is the one its sender was acknowledged with (a retried ``cid``
is the same message), an acknowledging device's cursors leave no gap, nothing
is refused.
"""

import asyncio
import itertools
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from clusterchat.client import ChatClient, offline_messages
from clusterchat.cluster import processes
from clusterchat.protocol import GroupChat, GroupChatAck, LoginAck, OneChat, OneChatAck
from tests.support.classic import PASSWORD
from tests.support.nginx import NginxFactory, NginxHandle
from tests.support.node import NodeFactory, NodeHandle
from tests.support.redis import RedisServer
from tests.support.timing import seconds

pytestmark = pytest.mark.integration

T = TypeVar("T")

#: Messages to send in all (each one-to-one or to a group).
MESSAGES = int(os.environ.get("CLUSTERCHAT_CHAOS_MESSAGES", "20000"))
#: Seconds over which the messages are paced (the faults run meanwhile).
TRAFFIC_SECONDS = float(os.environ.get("CLUSTERCHAT_CHAOS_SECONDS", "60"))
#: The seed of the fault schedule and of every user's choices.
SEED = int(os.environ.get("CLUSTERCHAT_CHAOS_SEED", "20261201"))
#: The nodes' database: ``sqlite`` (one file), or a private ``postgresql`` or
#: ``mariadb`` server (the fixtures of tests/support), on demand.
DATABASE = os.environ.get("CLUSTERCHAT_CHAOS_DB", "sqlite")
_DATABASE_FIXTURES = {"postgresql": "postgres_url", "mariadb": "mariadb_url"}

NODES = 3
USERS = 60  # the first half classic, the second acknowledging
GROUPS = 6
GROUP_SIZE = 8
GROUP_SHARE = 0.3
#: Text length range (characters): classic frames stay whole (under 1023 bytes).
TEXT_LENGTH = (300, 800)
#: The buffer cut: a flooder sends messages of this size to a victim logged in
#: on the stalled node until Redis cuts the node's subscriber (the kernel's
#: socket buffers absorb megabytes first), at most this many, within this long.
FLOOD_TEXT = 7000
FLOOD_MAX = 3000
FLOOD_SECONDS = seconds(30)
#: How many times the buffer cut stops its node again when nothing commits.
STALL_ATTEMPTS = 5
NODE_ARGS = ["--max-rate", "100000", "--max-burst", "100000"]

#: Per-attempt bound on connecting and logging in, and how many attempts a
#: reconnection may take in all.
LOGIN_TIMEOUT = seconds(10)
LOGIN_ATTEMPTS = 60
#: An acknowledging client gives up a connection that leaves a message this long
#: unacknowledged; a classic client waits, bounded by the traffic deadline.
ACK_TIMEOUT = seconds(10)
#: Traffic must end within this long, faults or not.
TRAFFIC_DEADLINE = seconds(TRAFFIC_SECONDS * 2.5 + 30)
#: After traffic and faults: how long every message may take to arrive.
QUIESCENCE = seconds(60)
#: ...and how long to keep listening for late repeats after that.
SETTLE = seconds(2)

TEST_TIMEOUT = int(seconds(120) + TRAFFIC_DEADLINE + QUIESCENCE)

REDIS_CUT_LINE = "for overcoming of output buffer limits"
DEFAULT_PUBSUB_LIMIT = "pubsub 32mb 8mb 60"
CUT_PUBSUB_LIMIT = "pubsub 64kb 32kb 1"

Key = tuple[int, int]  # (sender, sender's counter)


# --- records -------------------------------------------------------------------------------


@dataclass
class Sent:
    """One message: what was sent, and what the server acknowledged."""

    key: Key
    cid: str
    text: str
    to: int | None
    group: int | None
    recipients: tuple[int, ...]
    first_sent: float
    attempts: int = 0
    acked_at: float | None = None
    mid: str | None = None
    seq: int | None = None
    time: str | None = None


@dataclass
class Session:
    """One logged-in connection of a user."""

    user: int
    number: int
    started: float
    local_port: int | None
    login_cursor: int | None
    ended: float | None = None
    end: str = ""
    node: int | None = None
    received: list[Key] = field(default_factory=list)
    cursors: list[int] = field(default_factory=list)
    offline: int = 0


@dataclass
class Fault:
    """One injected fault, for the report and for classifying classic repeats."""

    kind: str
    target: str
    node: int | None
    started: float
    ended: float = 0.0
    note: str = ""


class Abandon(Exception):
    """The client gives up its connection (an acknowledging client's ack timeout)."""


# --- the shared ledger ---------------------------------------------------------------------


class Ledger:
    """Everything sent and received, with the pacing of the senders."""

    def __init__(self, budget: int, rate: float) -> None:
        self.budget = budget
        self.rate = rate
        self.t0 = 0.0
        self.numbers = itertools.count()
        self.sent: dict[Key, Sent] = {}
        self.by_text: dict[str, Key] = {}
        self.seen: defaultdict[int, set[Key]] = defaultdict(set)
        self.outstanding: set[tuple[Key, int]] = set()
        self.received_mids: dict[tuple[Key, int], set[str]] = defaultdict(set)
        self.refused: list[tuple[Sent, int, str | None]] = []
        self.ack_mismatch: list[tuple[Sent, str | None, str | None]] = []
        self.bad_pushes: list[str] = []
        self.unexpected_events: list[str] = []

    def allocate(self) -> float | None:
        """Take one message of the budget: the time it may be sent, or None when all are."""
        number = next(self.numbers)
        if number >= self.budget:
            return None
        return self.t0 + number / self.rate

    def register(self, message: Sent) -> Sent:
        """Record a new message (its cid derives from its key)."""
        message.cid = f"c{message.key[0]}-{message.key[1]}"
        self.sent[message.key] = message
        self.by_text[message.text] = message.key
        return message

    def acknowledged(self, message: Sent, mid: str | None, seq: int | None, when: float) -> None:
        if message.acked_at is not None:
            if (mid, seq) != (message.mid, message.seq):
                self.ack_mismatch.append((message, mid, message.mid))
            return
        message.acked_at = when
        message.mid, message.seq = mid, seq
        for recipient in message.recipients:
            if message.key not in self.seen[recipient]:
                self.outstanding.add((message.key, recipient))

    def delivered(self, recipient: int, key: Key, mid: str | None) -> None:
        self.seen[recipient].add(key)
        self.outstanding.discard((key, recipient))
        if mid is not None:
            self.received_mids[(key, recipient)].add(mid)


# --- one user ------------------------------------------------------------------------------


class Agent:
    """One user: a connection at a time through nginx, a reader and a sender."""

    def __init__(
        self,
        chaos: "Chaos",
        user_id: int,
        classic: bool,
        groups: list[int],
        rng: random.Random,
        direct: int | None = None,
    ) -> None:
        self.chaos = chaos
        self.direct = direct
        self.user_id = user_id
        self.classic = classic
        self.device = None if classic else f"chaos-device-{user_id}"
        self.groups = groups
        self.rng = rng
        self.counter = itertools.count(1)
        self.pending: Sent | None = None
        self.sending_done = direct is not None  # the flood victims only receive
        self.sessions: list[Session] = []
        self.cursor: int | None = None
        self.client: ChatClient | None = None
        self.logged_in = False
        self.reconnects = 0
        self.login_failures: Counter[str] = Counter()
        self.duplicates_dropped = 0
        self.abandoned = 0

    # -- the supervisor --

    async def run(self) -> None:
        """Connect, read and send; reconnect whenever the connection ends; until stop."""
        chaos = self.chaos
        while not chaos.stop.is_set():
            if self.sessions:
                self.reconnects += 1
            client, answer = await self._connect()
            if chaos.stop.is_set():
                await client.close()
                return
            address = client.local_address
            session = Session(
                user=self.user_id,
                number=len(self.sessions) + 1,
                started=time.monotonic(),
                local_port=address[1] if address else None,
                login_cursor=answer.cursor,
                node=self.direct,
            )
            self.sessions.append(session)
            self.client = client
            self.logged_in = True
            reader = asyncio.create_task(self._read(client, session, answer))
            stopper = asyncio.create_task(self._until_stop())
            sender = None if self.sending_done else asyncio.create_task(self._send_loop(client))
            waiting = {reader, stopper} if sender is None else {reader, stopper, sender}
            done: set[asyncio.Task[None]] = set()
            try:
                while True:
                    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if sender is None or sender not in done:
                        break
                    waiting.discard(sender)
                    error = sender.exception()
                    if error is None:  # the budget is spent: keep receiving
                        self.sending_done = True
                        sender = None
                        continue
                    if isinstance(error, Abandon):
                        session.end = f"abandoned by the client: {error}"
                        self.abandoned += 1
                    elif not isinstance(error, ConnectionError):
                        raise error
                    break
            finally:
                self.logged_in = False
                if stopper in done:
                    session.end = session.end or "closed at the end of the test"
                for task in (sender, stopper):
                    if task is not None:
                        task.cancel()
                await client.close()
                await asyncio.wait([reader])
                self.duplicates_dropped += client.duplicates_dropped
                if client.cursor is not None:
                    self.cursor = client.cursor
                self.client = None
            if chaos.stop.is_set():
                return

    async def _until_stop(self) -> None:
        await self.chaos.stop.wait()

    async def _connect(self) -> tuple[ChatClient, LoginAck]:
        """Connect through nginx and log in; bounded retries with back-off."""
        chaos = self.chaos
        if self.direct is None:
            host, port = "127.0.0.1", chaos.front.port
        else:
            host, port = chaos.nodes[self.direct].host, chaos.nodes[self.direct].port
        for attempt in range(LOGIN_ATTEMPTS):
            client: ChatClient | None = None
            try:
                async with asyncio.timeout(LOGIN_TIMEOUT):
                    client = await ChatClient.connect(host, port, classic=self.classic)
                    answer = await client.login(
                        self.user_id,
                        PASSWORD,
                        device=self.device,
                        after=self.cursor if self.device else None,
                        check=False,
                    )
                if answer.errno == 0:
                    if self.device is not None and answer.cursor is None:
                        await client.close()
                        raise AssertionError(
                            f"user {self.user_id}: device login answered without cursor "
                            f"(no acknowledged delivery on this server): {answer}"
                        )
                    if self.device is not None and answer.offlinemsg:
                        chaos.protocol_errors.append(
                            f"user {self.user_id}: device session got offlinemsg"
                        )
                    return client, answer
                self.login_failures[f"errno {answer.errno}: {answer.errmsg}"] += 1
            except (OSError, TimeoutError) as exc:
                self.login_failures[type(exc).__name__] += 1
            if client is not None:
                address = client.local_address
                await client.close()
                if address is not None and self.direct is None:
                    chaos.failed_attempts.append((time.monotonic(), address[1], None))
            if chaos.stop.is_set() and attempt > 3:
                break
            await asyncio.sleep(min(1.0, 0.05 * 2**attempt) * (0.5 + self.rng.random()))
        raise AssertionError(
            f"user {self.user_id} could not log in again after {LOGIN_ATTEMPTS} attempts: "
            f"{dict(self.login_failures)}"
        )

    # -- receiving --

    async def _read(self, client: ChatClient, session: Session, answer: LoginAck) -> None:
        stored = offline_messages(answer)
        session.offline = len(stored)
        for message in stored:
            self._receive(session, message)
        async for event in client.messages():
            if isinstance(event, OneChat | GroupChat):
                self._receive(session, event)
            else:
                self.chaos.ledger.unexpected_events.append(f"user {self.user_id}: {event}")
        session.ended = time.monotonic()
        session.end = session.end or "closed by the server"

    def _receive(self, session: Session, push: OneChat | GroupChat) -> None:
        ledger = self.chaos.ledger
        key = ledger.by_text.get(push.msg)
        if key is None:
            ledger.bad_pushes.append(f"user {self.user_id}: unknown text {push.msg[:40]!r}")
            return
        message = ledger.sent[key]
        right = push.id == key[0] and (
            (isinstance(push, OneChat) and message.to == self.user_id == push.toid)
            or (isinstance(push, GroupChat) and message.group == push.groupid)
        )
        if not right or self.user_id not in message.recipients:
            ledger.bad_pushes.append(f"user {self.user_id}: wrong header {push!r}")
        session.received.append(key)
        if push.cursor is not None:
            session.cursors.append(push.cursor)
        ledger.delivered(self.user_id, key, push.mid)

    # -- sending --

    async def _send_loop(self, client: ChatClient) -> None:
        """Send until the budget is spent; the unacknowledged message survives reconnects."""
        ledger = self.chaos.ledger
        while True:
            if self.pending is None:
                when = ledger.allocate()
                if when is None:
                    return
                self.pending = self._new_message()
                delay = when - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.pending.first_sent = time.monotonic()
            message = self.pending
            message.attempts += 1
            answer = await self._send_one(client, message)
            if answer.errno != 0:
                ledger.refused.append((message, answer.errno, answer.errmsg))
            else:
                ledger.acknowledged(message, answer.mid, answer.seq, time.monotonic())
            self.pending = None

    async def _send_one(self, client: ChatClient, message: Sent) -> OneChatAck | GroupChatAck:
        if message.group is not None:
            request: Awaitable[OneChatAck | GroupChatAck] = client.group_chat_acked(
                message.group, message.text, cid=message.cid, check=False
            )
        else:
            assert message.to is not None
            request = client.chat_acked(message.to, message.text, cid=message.cid, check=False)
        if self.classic:
            # Bounded by the traffic deadline; giving up the connection would drop
            # what its kernel buffers hold, a loss of the client's own making.
            return await request
        try:
            async with asyncio.timeout(ACK_TIMEOUT):
                return await request
        except TimeoutError:
            raise Abandon(f"no acknowledgement within {ACK_TIMEOUT:.0f} s") from None

    def _new_message(self) -> Sent:
        chaos = self.chaos
        n = next(self.counter)
        key = (self.user_id, n)
        length = self.rng.randint(*TEXT_LENGTH)
        head = f"{self.user_id}:{n}:"
        text = head + "x" * max(0, length - len(head))
        if self.groups and self.rng.random() < GROUP_SHARE:
            group = self.rng.choice(self.groups)
            recipients = tuple(m for m in chaos.members[group] if m != self.user_id)
            return chaos.ledger.register(Sent(key, "", text, None, group, recipients, 0.0))
        to = self.rng.choice([u for u in chaos.user_ids if u != self.user_id])
        return chaos.ledger.register(Sent(key, "", text, to, None, (to,), 0.0))


# --- the cluster and its faults ------------------------------------------------------------


class Chaos:
    """The cluster under test, its users and the fault schedule."""

    def __init__(
        self,
        nodes: list[NodeHandle],
        redis: RedisServer,
        front: NginxHandle,
        ledger: Ledger,
    ) -> None:
        self.nodes = nodes
        self.redis = redis
        self.front = front
        self.ledger = ledger
        self.user_ids: list[int] = []
        self.members: dict[int, list[int]] = {}
        self.agents: list[Agent] = []
        self.victims: list[Agent] = []
        self.failed_attempts: list[tuple[float, int, Session | None]] = []
        self.flooder = Flooder(ledger)
        self.stop = asyncio.Event()
        self.traffic_done = asyncio.Event()
        self.faults: list[Fault] = []
        self.paused: set[int] = set()
        self.protocol_errors: list[str] = []
        self.buffer_cuts = 0

    def node_of(self, port: int) -> int | None:
        for index, node in enumerate(self.nodes):
            if node.port == port:
                return index
        return None

    async def _redis_config(self, limit: str) -> None:
        """Set the pubsub output buffer limit (bounded retries: Redis may be restarting)."""
        for attempt in range(20):
            connection = aioredis.Redis.from_url(self.redis.url, socket_timeout=seconds(2))
            try:
                await connection.config_set("client-output-buffer-limit", limit)
                return
            except (aioredis.RedisError, OSError):
                await asyncio.sleep(0.1 * (attempt + 1))
            finally:
                await connection.aclose()
        raise AssertionError(f"could not set client-output-buffer-limit {limit!r}")

    def _redis_cuts(self) -> int:
        path = self.redis.dir / "redis.log"
        return path.read_text(errors="replace").count(REDIS_CUT_LINE) if path.exists() else 0

    async def run_faults(self) -> None:
        """The seeded schedule: shuffled cycles of every fault kind, until the traffic ends."""
        rng = random.Random(SEED)
        kinds = ["sigkill", "sigstop", "sigterm", "redis", "buffer-cut"]
        await asyncio.sleep(seconds(3))
        cycle = 0
        while cycle == 0 or not self.traffic_done.is_set():
            order = kinds[:]
            rng.shuffle(order)
            for kind in order:
                if cycle > 0 and self.traffic_done.is_set():
                    break
                node = rng.randrange(NODES)
                await self._fault(kind, node, rng)
                await asyncio.sleep(rng.uniform(1.5, 3.0))
            cycle += 1

    async def _fault(self, kind: str, index: int, rng: random.Random) -> None:
        node = self.nodes[index]
        fault = Fault(kind, f"node {index}", index, time.monotonic())
        if kind == "redis":
            fault.target, fault.node = "redis", None
        self.faults.append(fault)
        if kind == "sigkill":
            status = await asyncio.to_thread(node.stop, signal.SIGKILL)
            fault.note = f"exit {status}"
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            await asyncio.to_thread(node.restart)
        elif kind == "sigterm":
            status = await asyncio.to_thread(node.stop, signal.SIGTERM)
            fault.note = f"exit {status}"
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            await asyncio.to_thread(node.restart)
        elif kind == "sigstop":
            self._pause(index)
            await asyncio.sleep(rng.uniform(1.5, 3.0))
            self._resume(index)
        elif kind == "redis":
            await asyncio.to_thread(self.redis.kill)
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            await asyncio.to_thread(self.redis.start)
        elif kind == "buffer-cut":
            fault.note = await self._buffer_cut(index, rng)
        fault.ended = time.monotonic()

    async def _buffer_cut(self, index: int, rng: random.Random) -> str:
        """Stall node ``index`` while a flooder fills its subscriber's output buffer at
        Redis (limit lowered meanwhile) until Redis cuts it; then let it go on.

        The nodes share one SQLite file: a node stopped inside a write transaction
        holds the database lock, and then nothing commits anywhere, nothing is
        published and nothing can be cut. When the flood's messages are not
        acknowledged, the node is continued and stopped again a moment later.
        """
        victim = self.victims[index]
        await _wait_for(lambda: victim.logged_in, seconds(15))
        flooder = self.flooder.towards(self.nodes[(index + 1) % NODES], victim.user_id)
        before = self._redis_cuts()
        await self._redis_config(CUT_PUBSUB_LIMIT)
        stalls = 0
        try:
            while stalls < STALL_ATTEMPTS:
                stalls += 1
                self._pause(index)
                try:
                    flowing = await flooder.flood(lambda: self._redis_cuts() > before)
                    if flowing:
                        await asyncio.sleep(rng.uniform(0.2, 1.0))  # more piles up meanwhile
                finally:
                    self._resume(index)
                if flowing:
                    break
                await asyncio.sleep(rng.uniform(0.3, 1.0))
        finally:
            await self._redis_config(DEFAULT_PUBSUB_LIMIT)
            await flooder.finish()
        cuts = self._redis_cuts() - before
        self.buffer_cuts += cuts
        return f"{flooder.sent} flood messages, {stalls} stall(s), {cuts} subscriber(s) cut"

    def _pause(self, index: int) -> None:
        self.paused.add(index)
        processes.pause(self.nodes[index].child)

    def _resume(self, index: int) -> None:
        processes.resume(self.nodes[index].child)
        self.paused.discard(index)

    def resume_all(self) -> None:
        for index in list(self.paused):
            self._resume(index)


class Flooder:
    """The flooding user: big messages, each acknowledged (retried with its cid)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.user_id = 0
        self.numbers = itertools.count(1)
        self.pending: Sent | None = None
        self.node: NodeHandle | None = None
        self.to = 0
        self.sent = 0
        self._client: ChatClient | None = None

    def towards(self, node: NodeHandle, victim: int) -> "Flooder":
        """Flood ``victim`` from ``node`` (directly, not through nginx)."""
        self.node, self.to, self.sent = node, victim, 0
        return self

    async def flood(self, done: Callable[[], bool]) -> bool:
        """Send until ``done()``, ``FLOOD_MAX`` or ``FLOOD_SECONDS``; False if the first
        message was not acknowledged within a few seconds (nothing commits)."""
        deadline = time.monotonic() + FLOOD_SECONDS
        flowing = False
        while time.monotonic() < deadline:
            if self.pending is None:
                if done() or self.sent >= FLOOD_MAX:
                    break
                self.pending = self._new()
            limit = ACK_TIMEOUT if flowing else seconds(3)
            if await self._send(min(limit, deadline - time.monotonic())):
                flowing = True
            elif not flowing:
                return False
        return flowing

    async def finish(self) -> None:
        """Get the message still unacknowledged (if any) acknowledged; then disconnect."""
        deadline = time.monotonic() + seconds(60)
        while self.pending is not None and time.monotonic() < deadline:
            if not await self._send(ACK_TIMEOUT):
                await asyncio.sleep(0.2)
        if self._client is not None:
            await self._client.close()
            self._client = None
        assert self.pending is None, f"flood message {self.pending.cid} never acknowledged"

    def _new(self) -> Sent:
        n = next(self.numbers)
        head = f"{self.user_id}:{n}:"
        text = head + "y" * (FLOOD_TEXT - len(head))
        self.sent += 1
        sent = Sent((self.user_id, n), "", text, self.to, None, (self.to,), time.monotonic())
        return self.ledger.register(sent)

    async def _send(self, limit: float) -> bool:
        """Send the pending message once; True when it was acknowledged."""
        message = self.pending
        assert message is not None
        assert message.to is not None
        assert self.node is not None
        try:
            async with asyncio.timeout(max(limit, 0.1)):
                if self._client is None or self._client.closed:
                    self._client = await ChatClient.connect(self.node.host, self.node.port)
                    await self._client.login(self.user_id, PASSWORD)
                message.attempts += 1
                answer = await self._client.chat_acked(message.to, message.text, cid=message.cid)
        except (OSError, TimeoutError):
            if self._client is not None:
                await self._client.close()
                self._client = None
            return False
        self.ledger.acknowledged(message, answer.mid, answer.seq, time.monotonic())
        self.pending = None
        return True


# --- analysis ------------------------------------------------------------------------------


@dataclass
class Summary:
    sent: int = 0
    acknowledged: int = 0
    expected: int = 0
    received: int = 0
    duplicates: int = 0
    classic_in_session: int = 0
    classic_later_session: int = 0
    device_duplicates: int = 0
    lost: int = 0
    reordered: int = 0
    classic_repeats: int = 0
    server_repeats_dropped: int = 0
    cursor_gaps: int = 0
    mid_mismatches: int = 0
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"chaos: sent={self.sent} acknowledged={self.acknowledged} "
            f"deliveries_expected={self.expected} received={self.received} "
            f"duplicates={self.duplicates} (classic in one session {self.classic_in_session}, "
            f"classic in a later session not after a SIGKILL {self.classic_later_session}, "
            f"devices {self.device_duplicates}) lost={self.lost} reordered={self.reordered} "
            f"classic_repeats_after_sigkill={self.classic_repeats} "
            f"device_repeats_dropped_by_client={self.server_repeats_dropped} "
            f"cursor_gaps={self.cursor_gaps} mid_mismatches={self.mid_mismatches}"
        )


def _killed_during(chaos: Chaos, session: Session) -> bool:
    """Whether the session's node was SIGKILLed while the session lived."""
    if session.node is None:
        return False
    end = session.ended if session.ended is not None else float("inf")
    return any(
        f.kind == "sigkill" and f.node == session.node and session.started <= f.started <= end
        for f in chaos.faults
    )


def analyse(chaos: Chaos) -> Summary:
    ledger = chaos.ledger
    summary = Summary()
    summary.sent = len(ledger.sent)
    acked = [m for m in ledger.sent.values() if m.acked_at is not None]
    summary.acknowledged = len(acked)
    summary.expected = sum(len(m.recipients) for m in acked)
    for agent in chaos.agents:
        summary.server_repeats_dropped += agent.duplicates_dropped
        first_seen: list[Key] = []
        if agent.classic:
            last_session_of: dict[Key, Session] = {}
            for session in agent.sessions:
                counts = Counter(session.received)
                for key, count in counts.items():
                    if count > 1:
                        summary.classic_in_session += count - 1
                        summary.details.append(
                            f"classic user {agent.user_id} got {key} {count} times in session "
                            f"{session.number} (node {session.node}, {session.end})"
                        )
                for key in dict.fromkeys(session.received):
                    previous = last_session_of.get(key)
                    if previous is None:
                        first_seen.append(key)
                    elif _killed_during(chaos, previous):
                        summary.classic_repeats += 1
                    else:
                        summary.classic_later_session += 1
                        summary.details.append(
                            f"classic user {agent.user_id} got {key} "
                            f"(mid {ledger.sent[key].mid}) again in session {session.number} "
                            f"after session {previous.number} on node {previous.node} ended at "
                            f"{_at(chaos, previous.ended)} ({previous.end}); faults then: "
                            f"{_faults_near(chaos, previous.ended, 2)}"
                        )
                    last_session_of[key] = session
        else:
            all_keys = [key for session in agent.sessions for key in session.received]
            for key, count in Counter(all_keys).items():
                if count > 1:
                    summary.device_duplicates += count - 1
                    summary.details.append(
                        f"device of user {agent.user_id} got {key} {count} times"
                    )
            first_seen = list(dict.fromkeys(all_keys))
            cursors = sorted({c for session in agent.sessions for c in session.cursors})
            if cursors:
                start = agent.sessions[0].login_cursor or 0
                missing = sorted(set(range(start + 1, cursors[-1] + 1)) - set(cursors))
                summary.cursor_gaps += len(missing)
                if missing:
                    summary.details.append(
                        f"device of user {agent.user_id}: cursors never pushed {missing[:10]}"
                    )
        summary.received += len(first_seen)
        summary.reordered += _reorders(agent, first_seen, ledger, summary.details)
    summary.duplicates = (
        summary.classic_in_session + summary.classic_later_session + summary.device_duplicates
    )
    for message in acked:
        for recipient in message.recipients:
            if message.key not in ledger.seen[recipient]:
                summary.lost += 1
                if summary.lost <= 20:
                    summary.details.append(_describe_loss(chaos, message, recipient))
    for (key, recipient), mids in ledger.received_mids.items():
        message = ledger.sent[key]
        if len(mids) > 1 or (message.mid is not None and mids != {message.mid}):
            summary.mid_mismatches += 1
            summary.details.append(
                f"{key} to {recipient}: pushed with mid(s) {sorted(mids)}, acked {message.mid}"
            )
    return summary


def _at(chaos: Chaos, moment: float | None) -> str:
    return "?" if moment is None else f"{moment - chaos.ledger.t0:.2f}s"


def _faults_near(chaos: Chaos, moment: float | None, margin: float) -> list[str]:
    if moment is None:
        return []
    return [
        f"{f.kind}@{f.target} {_at(chaos, f.started)}-{_at(chaos, f.ended)} {f.note}".strip()
        for f in chaos.faults
        if f.started - margin <= moment <= f.ended + margin
    ]


def _reorders(agent: Agent, keys: list[Key], ledger: Ledger, details: list[str]) -> int:
    """Arrivals behind a later message of the same conversation (first sightings)."""
    reordered = 0
    highest: dict[tuple[str, int], tuple[int, Key]] = {}
    for key in keys:
        message = ledger.sent[key]
        if message.group is not None:
            if message.seq is None:
                continue  # never acknowledged: its place in the group is unknown
            stream, rank = ("group", message.group), message.seq
        else:
            stream, rank = ("user", message.key[0]), message.key[1]
        top = highest.get(stream)
        if top is not None and rank < top[0]:
            reordered += 1
            if reordered <= 5:
                details.append(
                    f"user {agent.user_id}: {key} (rank {rank}) arrived after {top[1]} "
                    f"(rank {top[0]}) in {stream[0]} {stream[1]}"
                )
        else:
            highest[stream] = (rank, key)
    return reordered


def _describe_loss(chaos: Chaos, message: Sent, recipient: int) -> str:
    agent = next(a for a in chaos.agents if a.user_id == recipient)
    kind = "classic" if agent.classic else "device"
    t0 = chaos.ledger.t0
    acked = (message.acked_at or t0) - t0
    near = _faults_near(chaos, message.acked_at, 5)
    sessions = [
        f"#{s.number} node {s.node} {s.started - t0:.1f}-"
        f"{(s.ended or time.monotonic()) - t0:.1f}s ({s.end or 'open'})"
        for s in agent.sessions
    ]
    return (
        f"LOST {message.key} cid {message.cid} mid {message.mid} seq {message.seq} "
        f"{'group ' + str(message.group) if message.group else 'to ' + str(message.to)} "
        f"-> {kind} user {recipient}: acked at {acked:.2f}s after {message.attempts} "
        f"attempt(s); faults near: {near}; recipient sessions: {sessions}"
    )


def _node_log_lines(nodes: list[NodeHandle], words: tuple[str, ...], limit: int) -> list[str]:
    lines: list[str] = []
    for index, node in enumerate(nodes):
        path: Path = node.child.log_path
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if any(word in line for word in words):
                lines.append(f"node {index}: {line}")
    return lines[:limit]


# --- the test ------------------------------------------------------------------------------


async def _within(awaitable: Awaitable[T], limit: float) -> T:
    async with asyncio.timeout(limit):
        return await awaitable


async def _setup_users(chaos: Chaos, rng: random.Random) -> None:
    """Register the users and the groups directly on node 0 (no faults yet)."""
    node = chaos.nodes[0]
    async with await ChatClient.connect(node.host, node.port) as admin:
        ids = []
        for i in range(USERS + NODES + 1):
            answer = await _within(admin.register(f"chaos-{i}", PASSWORD), seconds(10))
            assert answer.id is not None
            ids.append(answer.id)
    chaos.user_ids = ids[:USERS]
    victims, chaos.flooder.user_id = ids[USERS : USERS + NODES], ids[-1]
    classic = set(chaos.user_ids[: USERS // 2])
    group_members = [rng.sample(chaos.user_ids, GROUP_SIZE) for _ in range(GROUPS)]
    for number, members in enumerate(group_members):
        creator = members[0]
        async with await ChatClient.connect(node.host, node.port) as client:
            await _within(client.login(creator, PASSWORD), seconds(10))
            made = await _within(client.create_group(f"chaos-g{number}", "chaos"), seconds(10))
            assert made.groupid is not None
            chaos.members[made.groupid] = members
        for member in members[1:]:
            async with await ChatClient.connect(node.host, node.port) as client:
                await _within(client.login(member, PASSWORD), seconds(10))
                await _within(client.add_group(made.groupid), seconds(10))
    for user_id in chaos.user_ids:
        groups = [g for g, members in chaos.members.items() if user_id in members]
        agent_rng = random.Random(SEED * 1000 + user_id)
        chaos.agents.append(Agent(chaos, user_id, user_id in classic, groups, agent_rng))
    for index, user_id in enumerate(victims):
        victim = Agent(chaos, user_id, False, [], random.Random(SEED * 1000 + user_id), index)
        chaos.victims.append(victim)
        chaos.agents.append(victim)


def _place_sessions(chaos: Chaos) -> None:
    """Set each session's node from nginx's access log (every connection is closed).

    nginx logs a session when it ends; a client port comes again only after its
    previous connection ended, so per port, nginx's order is the order in which
    our connections through it (sessions and failed login attempts) ended.
    """
    ours: list[tuple[float, int, Session | None]] = list(chaos.failed_attempts)
    for agent in chaos.agents:
        if agent.direct is None:
            ours += [(s.ended or 0.0, s.local_port, s) for s in agent.sessions if s.local_port]
    wanted = Counter(port for _, port, _ in ours)
    by_port: defaultdict[int, list[tuple[str, int] | None]] = defaultdict(list)
    deadline = time.monotonic() + seconds(5)
    while True:
        by_port.clear()
        for port, address in chaos.front.sessions():
            by_port[port].append(address)
        if all(len(by_port[p]) >= n for p, n in wanted.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for _, port, session in sorted(ours, key=lambda item: item[0]):
        address = by_port[port].pop(0) if by_port[port] else None
        if session is not None and address is not None:
            session.node = chaos.node_of(address[1])


async def _wait_for(condition: Callable[[], bool], limit: float) -> bool:
    """Poll ``condition`` until it holds or ``limit`` seconds pass; its last value."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        await asyncio.sleep(0.1)
    return True


@pytest.fixture
def db_url(request: pytest.FixtureRequest) -> str | None:
    """The nodes' database URL (None: the node factory's SQLite file), per ``DATABASE``."""
    assert DATABASE in ("sqlite", *_DATABASE_FIXTURES), f"CLUSTERCHAT_CHAOS_DB={DATABASE}?"
    if DATABASE == "sqlite":
        return None
    return str(request.getfixturevalue(_DATABASE_FIXTURES[DATABASE]))


@pytest.mark.timeout(TEST_TIMEOUT)
async def test_every_acknowledged_message_arrives_once_in_order_through_chaos(
    node_factory: NodeFactory,
    redis_server: RedisServer,
    nginx_factory: NginxFactory,
    db_url: str | None,
) -> None:
    """50+ clients, 3 nodes, nginx, redis: node kills, stalls, stops, redis kills, buffer cuts."""
    began = time.monotonic()

    def start_node(i: int) -> NodeHandle:
        return node_factory(
            db_url=db_url,
            extra_args=["--redis", redis_server.url, "--node-id", f"n{i}", *NODE_ARGS],
        )

    nodes = [await asyncio.to_thread(start_node, i) for i in range(NODES)]
    upstreams = [(n.host, n.port) for n in nodes]
    front = await asyncio.to_thread(nginx_factory, upstreams, access_log=True)
    ledger = Ledger(MESSAGES, MESSAGES / TRAFFIC_SECONDS)
    chaos = Chaos(nodes, redis_server, front, ledger)
    await _setup_users(chaos, random.Random(SEED))

    agent_tasks: list[asyncio.Task[None]] = []
    faults: asyncio.Task[None] | None = None
    summary = Summary()
    try:
        ledger.t0 = time.monotonic()
        agent_tasks = [asyncio.create_task(agent.run()) for agent in chaos.agents]
        faults = asyncio.create_task(chaos.run_faults())

        def senders_done() -> bool:
            return all(agent.sending_done for agent in chaos.agents)

        async def watch(tasks: list[asyncio.Task[None]], what: Callable[[], bool]) -> bool:
            """Wait for ``what``, failing at once if an agent task fails."""
            deadline = time.monotonic() + TRAFFIC_DEADLINE
            while not what():
                for task in tasks:
                    if task.done():
                        task.result()  # raises the agent's failure
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(0.2)
            return True

        traffic_ok = await watch(agent_tasks, senders_done)
        chaos.traffic_done.set()
        traffic_end = time.monotonic()
        await _within(faults, seconds(60))
        assert traffic_ok, (
            f"traffic did not finish within {TRAFFIC_DEADLINE:.0f} s: "
            f"{sum(a.sending_done for a in chaos.agents)} of {USERS} senders done, "
            f"{len(ledger.sent)} messages sent"
        )

        def quiet() -> bool:
            for task in agent_tasks:
                if task.done():
                    task.result()
            return not ledger.outstanding and all(a.logged_in for a in chaos.agents)

        complete = await _wait_for(quiet, QUIESCENCE)
        quiescent_after = time.monotonic() - traffic_end
        await asyncio.sleep(SETTLE)
        not_logged_in = [a.user_id for a in chaos.agents if not a.logged_in]
    finally:
        chaos.traffic_done.set()
        chaos.stop.set()
        if faults is not None and not faults.done():
            faults.cancel()
            await asyncio.wait([faults])
        chaos.resume_all()
        if agent_tasks:
            await _within(asyncio.wait(agent_tasks), seconds(30))

    for agent_task in agent_tasks:
        agent_task.result()
    await asyncio.to_thread(_place_sessions, chaos)
    summary = analyse(chaos)
    t0 = ledger.t0
    fault_list = [f"{f.kind}@{f.target} {f.started - t0:.1f}s {f.note}" for f in chaos.faults]
    reconnects = sum(a.reconnects for a in chaos.agents)
    print()
    print(summary.line())
    print(
        f"chaos: clients={len(chaos.agents)} (classic {USERS // 2}, flood victims "
        f"{len(chaos.victims)}, +1 flooder) groups={GROUPS}x{GROUP_SIZE} "
        f"faults={len(chaos.faults)} buffer_cuts={chaos.buffer_cuts} reconnects={reconnects} "
        f"abandoned={sum(a.abandoned for a in chaos.agents)} refused={len(ledger.refused)} "
        f"login_failures={sum(sum(a.login_failures.values()) for a in chaos.agents)} "
        f"traffic={traffic_end - t0:.1f}s quiescent_after={quiescent_after:.1f}s "
        f"total={time.monotonic() - began:.1f}s seed={SEED} database={DATABASE}"
    )
    print("chaos faults: " + "; ".join(fault_list))
    problems = summary.details + ledger.bad_pushes[:10] + chaos.protocol_errors[:10]
    problems += [f"refused {m.key} ({m.cid}): errno {e} {t}" for m, e, t in ledger.refused[:10]]
    problems += [f"retry of {m.cid} acked {a}, first {b}" for m, a, b in ledger.ack_mismatch[:10]]
    problems += ledger.unexpected_events[:10]
    if problems:
        print("chaos problems:\n  " + "\n  ".join(problems[:60]))
        words = ("ERROR", "Traceback", "WARNING")
        print("chaos node log:\n  " + "\n  ".join(_node_log_lines(nodes, words, 40)))

    kinds = {f.kind for f in chaos.faults}
    assert kinds == {"sigkill", "sigstop", "sigterm", "redis", "buffer-cut"}, kinds
    assert chaos.buffer_cuts >= 1, "redis never cut a stalled node's subscriber"
    assert summary.sent >= MESSAGES
    assert summary.acknowledged == summary.sent, "messages left unacknowledged"
    assert not not_logged_in, f"users not logged in at the end: {not_logged_in}"
    assert complete, f"{len(ledger.outstanding)} deliveries still missing after quiescence"
    assert (summary.duplicates, summary.lost, summary.reordered) == (0, 0, 0), summary.line()
    assert (summary.cursor_gaps, summary.mid_mismatches) == (0, 0), summary.line()
    assert not ledger.refused
    assert not ledger.ack_mismatch
    assert not ledger.bad_pushes
    assert not chaos.protocol_errors
    assert not ledger.unexpected_events
