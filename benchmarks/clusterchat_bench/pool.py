"""Pool: the simulated users of one scenario inside a load-generator process.

Each member is one ``ChatClient`` connection (opened from a chosen source
address when given, so that more connections than one address has ephemeral
ports can be made). ``register`` creates the accounts over a few shared
connections; ``login`` opens each member's own connection and logs it in at
once. Both run with bounded concurrency and a timeout per request. ``pair``
and ``group`` turn members into flows (who sends to what, and how many
receivers each message has) and make every member of a flow report what it
reads (deliveries, refusals, its connection's end) to the pool's ``Recorder``
as it is read: a listener on the client, no task or queue per message, so
that the load generator spends as little of the machine it shares with the
cluster as it can.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from clusterchat.client import ChatClient
from clusterchat.protocol import (
    Answer,
    Error,
    GroupChat,
    GroupChatAck,
    OneChat,
    OneChatAck,
    ServerMessage,
)
from clusterchat_bench.commands import FlowsReady, PhaseDone, UserSpec
from clusterchat_bench.recorder import Recorder

__all__ = ["Flow", "Member", "Pool", "open_client"]

_REQUEST_TIMEOUT = 60.0
_FAILURES_KEPT = 5

Progress = Callable[[int], None]


@dataclass
class Member:
    """One simulated user: its connection and, once registered, its id."""

    index: int
    spec: UserSpec
    client: ChatClient | None = None
    user_id: int | None = None
    logged_in: bool = False


@dataclass(frozen=True, slots=True)
class Flow:
    """A sender and where its messages go: a user (``group`` False) or a group."""

    sender: ChatClient
    target: int
    group: bool
    receivers: int

    async def send(self, text: str) -> None:
        """Send one message, without waiting for any answer."""
        if self.group:
            await self.sender.group_chat(self.target, text)
        else:
            await self.sender.chat(self.target, text)


async def open_client(spec: UserSpec) -> ChatClient:
    """Connect to ``spec.endpoint``, from ``spec.source`` when given.

    Raises:
        OSError: The connection could not be made.
    """
    local = (spec.source, 0) if spec.source else None
    return await ChatClient.connect(spec.endpoint.host, spec.endpoint.port, local_address=local)


class Pool:
    """The members of one scenario in this worker, and their flows."""

    def __init__(self) -> None:
        self.members: list[Member] = []
        self.flows: list[Flow] = []
        self.recorder = Recorder()

    # --- setting up ---------------------------------------------------------------------

    async def register(
        self, users: Sequence[UserSpec], password: str, concurrency: int, progress: Progress
    ) -> PhaseDone:
        """Register every user over a few shared connections (closed afterwards)."""
        start = len(self.members)
        members = [Member(start + i, spec) for i, spec in enumerate(users)]
        self.members.extend(members)
        registrars = _Registrars()

        async def one(member: Member) -> str | None:
            client = await registrars.acquire(member.spec)
            try:
                ack = await client.register(member.spec.name, password, check=False)
            finally:
                registrars.release(member.spec, client)
            if ack.errno != 0 or ack.id is None:
                return _refusal("register", member.spec.name, ack)
            member.user_id = ack.id
            return None

        try:
            return await _phase(members, one, concurrency, progress)
        finally:
            await registrars.close()

    async def login(self, password: str, concurrency: int, progress: Progress) -> PhaseDone:
        """Connect each registered member and log it in; the connections stay open."""
        members = [m for m in self.members if m.user_id is not None and not m.logged_in]

        async def one(member: Member) -> str | None:
            assert member.user_id is not None
            member.client = await open_client(member.spec)
            ack = await member.client.login(member.user_id, password, check=False)
            if ack.errno != 0:
                return _refusal("login", member.spec.name, ack)
            member.logged_in = True
            return None

        return await _phase(members, one, concurrency, progress)

    def pair(self) -> FlowsReady:
        """Members 2k and 2k+1 send to each other (a member without partner is left out)."""
        ready = [m for m in self.members if m.logged_in]
        for a, b in zip(ready[::2], ready[1::2], strict=False):
            for sender, receiver in ((a, b), (b, a)):
                assert sender.client is not None
                assert receiver.user_id is not None
                self.flows.append(Flow(sender.client, receiver.user_id, False, 1))
            self._listen(a)
            self._listen(b)
        return FlowsReady(len(self.flows), sum(f.receivers for f in self.flows), ())

    async def group(self, size: int, prefix: str, concurrency: int) -> FlowsReady:
        """Cut the members into groups of ``size``; the first of each creates it and sends."""
        ready = [m for m in self.members if m.logged_in]
        chunks = [ready[i : i + size] for i in range(0, len(ready) - size + 1, size)]
        failures: list[str] = []
        limit = asyncio.Semaphore(concurrency)

        async def build(number: int, chunk: list[Member]) -> None:
            creator = chunk[0]
            assert creator.client is not None
            async with limit, asyncio.timeout(_REQUEST_TIMEOUT):
                ack = await creator.client.create_group(f"{prefix}-{number}", "bench", check=False)
            if ack.errno != 0 or ack.groupid is None:
                failures.append(_refusal("create group", creator.spec.name, ack))
                return
            group_id = ack.groupid

            async def join(member: Member) -> bool:
                assert member.client is not None
                async with limit, asyncio.timeout(_REQUEST_TIMEOUT):
                    answer = await member.client.add_group(group_id, check=False)
                if answer.errno != 0:
                    failures.append(_refusal("join group", member.spec.name, answer))
                    return False
                return True

            joined = await asyncio.gather(*(join(m) for m in chunk[1:]))
            self.flows.append(Flow(creator.client, group_id, True, sum(joined)))
            self._listen(creator)
            for member, ok in zip(chunk[1:], joined, strict=True):
                if ok:
                    self._listen(member)

        await asyncio.gather(*(build(n, chunk) for n, chunk in enumerate(chunks)))
        kept = tuple(failures[:_FAILURES_KEPT])
        return FlowsReady(len(self.flows), sum(f.receivers for f in self.flows), kept)

    def _listen(self, member: Member) -> None:
        client = member.client
        assert client is not None
        recorder = self.recorder
        index = member.index

        def heard(message: ServerMessage | None) -> None:
            if isinstance(message, OneChat | GroupChat):
                recorder.delivered(index, message.msg)
            elif isinstance(message, OneChatAck | GroupChatAck | Error):
                if message.errno != 0:
                    recorder.error(f"errno {message.errno}: {message.errmsg}")
            elif message is None and self.flows:
                # a connection lost while flows run is a finding, not a detail
                recorder.error(f"connection of {member.spec.name} closed")

        client.listen(heard)

    # --- tearing down -------------------------------------------------------------------

    async def close(self) -> None:
        """Close every connection (a connection's end is no finding once the flows are gone)."""
        self.flows.clear()
        clients = [m.client for m in self.members if m.client is not None]
        for start in range(0, len(clients), 500):
            await asyncio.gather(*(_close(c) for c in clients[start : start + 500]))
        self.members.clear()


class _Registrars:
    """Connections that register users one after another, reused per endpoint and source.

    Registering does not log in, so one connection can register many users;
    the long-lived connection of each user is opened by ``login`` and logs in
    at once (a node closes a connection that stays logged out too long).
    """

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int, str | None], list[ChatClient]] = {}
        self._all: list[ChatClient] = []

    @staticmethod
    def _key(spec: UserSpec) -> tuple[str, int, str | None]:
        return (spec.endpoint.host, spec.endpoint.port, spec.source)

    async def acquire(self, spec: UserSpec) -> ChatClient:
        idle = self._idle.get(self._key(spec))
        if idle:
            return idle.pop()
        client = await open_client(spec)
        self._all.append(client)
        return client

    def release(self, spec: UserSpec, client: ChatClient) -> None:
        if not client.closed:
            self._idle.setdefault(self._key(spec), []).append(client)

    async def close(self) -> None:
        await asyncio.gather(*(_close(client) for client in self._all))
        self._all.clear()
        self._idle.clear()


async def _close(client: ChatClient) -> None:
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        async with asyncio.timeout(5.0):
            await client.close()


def _refusal(what: str, name: str, answer: Answer) -> str:
    return f"{what} {name}: errno {answer.errno} {answer.errmsg or ''}".rstrip()


async def _phase(
    members: Sequence[Member],
    one: Callable[[Member], Awaitable[str | None]],
    concurrency: int,
    progress: Progress,
) -> PhaseDone:
    limit = asyncio.Semaphore(concurrency)
    failures: list[str] = []
    done = 0

    async def guarded(member: Member) -> None:
        nonlocal done
        async with limit:
            try:
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    failure = await one(member)
            except (OSError, ConnectionError, TimeoutError) as exc:
                failure = f"{member.spec.name}: {type(exc).__name__}: {exc}"
            if failure is None:
                done += 1
                progress(done)
            else:
                failures.append(failure)

    started = time.monotonic_ns()
    await asyncio.gather(*(guarded(m) for m in members))
    ended = time.monotonic_ns()
    return PhaseDone(done, len(failures), tuple(failures[:_FAILURES_KEPT]), started, ended)
