"""ChatService: the chat rules behind one node (docs/architecture.md).

The transport calls ``open`` for each connection, ``handle`` for each decoded
request in order, and ``closed`` when the connection ends. ``handle`` looks
the request's handler up in one table. The common requests (chat to a cached
user or group, ping, ack) finish synchronously and return None; anything that
must wait (login, a cache miss, a full log writer) comes back as a coroutine
that the transport runs before it handles the connection's next request.

The service is also the bus's handler: envelopes from other nodes arrive in
``on_bus_message``.

Errors: a ``ChatError`` becomes the request's error answer; any other
exception is a bug: logged with its traceback, answered with errno 50, and the
connection lives on.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import msgspec

from clusterchat.bus.base import Bus
from clusterchat.bus.channels import GROUPS_CHANNEL, ChannelNames
from clusterchat.presence.base import Presence
from clusterchat.protocol import (
    Ack,
    AddFriend,
    AddGroup,
    CreateGroup,
    ErrorCode,
    GroupChat,
    Invite,
    Limits,
    Login,
    Logout,
    OneChat,
    Outbound,
    Ping,
    Pong,
    Register,
    Request,
    error_answer,
)
from clusterchat.service import accounts, friends, groups
from clusterchat.service.background import Background
from clusterchat.service.context import Context, Policy
from clusterchat.service.delivery import USERS_PER_QUERY, Delivery
from clusterchat.service.envelope import Kind, decode_envelope
from clusterchat.service.errors import ChatError
from clusterchat.service.passwords import PasswordHasher
from clusterchat.service.sending import send_chat
from clusterchat.service.sessions import Session, SessionRegistry, SessionState
from clusterchat.service.throttled_log import ThrottledLog, exception_kind
from clusterchat.store.base import Store

__all__ = ["SWEEPER_TASK", "ChatService"]

log = logging.getLogger("clusterchat.service")

Pending = Coroutine[Any, Any, None]
Handler = Callable[[Context, SessionState, Any], Pending | None]

#: The name of the periodic sweep task, which runs for the node's whole life.
SWEEPER_TASK = "clusterchat-sweep"
#: Seconds a shutdown waits for the sessions' output to reach the kernel.
_SHUTDOWN_DRAIN = 2.0


def _ping(ctx: Context, state: SessionState, request: Ping) -> None:
    state.session.send(Outbound.of(Pong(ref=request.ref)))


#: Requests a connection may make before logging in.
_OPEN: dict[type[Request], Handler] = {
    Login: accounts.login,
    Register: accounts.register,
    Ping: _ping,
}
#: Requests of a logged-in user (their ``id``, when given, must be that user).
_LOGGED_IN: dict[type[Request], Handler] = {
    OneChat: send_chat,
    GroupChat: send_chat,
    Ack: accounts.ack,
    Logout: accounts.logout,
    AddFriend: friends.add_friend,
    CreateGroup: groups.create_group,
    AddGroup: groups.add_group,
    Invite: groups.invite,
}


#: Refusals at a limit, logged once a minute per address and kind.
_LOGGED_LIMITS = frozenset({ErrorCode.LIMIT_REACHED, ErrorCode.TRY_LATER})


class ChatService:
    """Chat rules for one node; wired by ``clusterchat.node``."""

    def __init__(
        self,
        *,
        node_id: str,
        store: Store,
        bus: Bus,
        presence: Presence,
        passwords: PasswordHasher,
        limits: Limits,
        policy: Policy,
    ) -> None:
        registry = SessionRegistry(self._first_session, self._last_session)
        self.ctx = Context(
            node_id=node_id,
            store=store,
            bus=bus,
            presence=presence,
            registry=registry,
            delivery=Delivery(node_id, registry, bus, store),
            passwords=passwords,
            limits=limits,
            policy=policy,
        )
        self._states: set[SessionState] = set()
        self._tasks = Background(log, "the sweep makes up for it")
        self._sweeper: asyncio.Task[None] | None = None
        # Lines any client can cause; apart, so that refusals from many addresses
        # never crowd out the first traceback of a bug.
        self._bugs = self._throttled_log()
        self._refusals = self._throttled_log()

    def _throttled_log(self) -> ThrottledLog:
        policy = self.ctx.policy
        return ThrottledLog(
            log, interval=policy.log_throttle_interval, max_kinds=policy.log_throttle_kinds
        )

    @property
    def node_id(self) -> str:
        return self.ctx.node_id

    @property
    def registry(self) -> SessionRegistry:
        return self.ctx.registry

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the bus and listen for membership changes."""
        await self.ctx.bus.start(self)
        await self.ctx.bus.subscribe(GROUPS_CHANNEL)
        if self.ctx.policy.sweep_interval > 0:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name=SWEEPER_TASK)

    async def _sweep(self) -> None:
        """Compare local users' log heads with their sessions now and then (``Policy``)."""
        while True:
            await asyncio.sleep(self.ctx.policy.sweep_interval)
            try:
                await self.ctx.delivery.sweep()
            except Exception:
                log.exception("periodic sweep failed; trying again next time")

    async def shutdown(self) -> None:
        """Commit what was accepted, save every session's exact cursor, then close them.

        The cursors are saved *before* the connections close: a client that
        reconnects to another node at once must find its position there.
        """
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.wait([self._sweeper])
        await self._tasks.cancel()
        timeout = self.ctx.policy.shutdown_timeout
        try:
            async with asyncio.timeout(timeout):
                await self.ctx.writer.flush()
        except TimeoutError:
            log.error(
                "stopping: %d accepted message(s) not stored after %.0f s: the store does"
                " not take them (none of them was acknowledged to its sender)",
                len(self.ctx.writer),
                timeout,
            )
        feeds = [state.feed for state in self._states if state.feed is not None]
        for feed in feeds:
            feed.stop()
        for feed in feeds:
            await feed.stopped()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SHUTDOWN_DRAIN):
                await self._drain_output()
        await self.ctx.cursors.save_all(feeds)
        for state in list(self._states):
            state.session.close("server shutting down")
        for state in list(self._states):
            await self.closed(state)
        await self.ctx.cursors.close()
        await self.ctx.delivery.close()
        self.ctx.passwords.close()

    async def _drain_output(self) -> None:
        """Wait until the kernel took what every open session was sent.

        Polled: the kernel tells nobody when it took the last bytes.
        """
        while any(  # noqa: ASYNC110
            not state.session.closed and state.session.delivered < state.session.written
            for state in self._states
        ):
            await asyncio.sleep(0.01)

    # --- connections ------------------------------------------------------------------

    def open(self, session: Session) -> SessionState:
        state = SessionState(session)
        self._states.add(state)
        return state

    async def closed(self, state: SessionState) -> None:
        """The connection ended: its user leaves this node if it was the last session."""
        if state not in self._states:
            return
        self._states.discard(state)
        if state.user_id is not None:
            log.info("user %d left node %s (%s)", state.user_id, self.node_id, state.session.peer)
        await accounts.end_session(self.ctx, state)

    def handle(self, state: SessionState, request: Request) -> Pending | None:
        """Handle one request; return a coroutine to await if it cannot finish at once."""
        try:
            handler = _OPEN.get(type(request))
            if handler is None:
                handler = _LOGGED_IN[type(request)]
                self._check_sender(state, getattr(request, "id", None))
            pending = handler(self.ctx, state, request)
            if pending is not None:
                return self._guard(state, request, pending)
        except Exception as exc:
            self._failed(state, request, exc)
        return None

    async def _guard(self, state: SessionState, request: Request, work: Pending) -> None:
        try:
            await work
        except Exception as exc:
            self._failed(state, request, exc)

    def _failed(self, state: SessionState, request: Request, exc: Exception) -> None:
        """Answer a request that raised: a refusal as it says, anything else as a bug."""
        if isinstance(exc, ChatError):
            self._refuse(state, request, exc)
            return
        where = f"handling {type(request).__name__}"
        self._bugs.log(
            exception_kind(where, exc), logging.ERROR, "bug while %s", where, exc_info=exc
        )
        self._refuse(state, request, ChatError(ErrorCode.INTERNAL, "internal server error"))

    def _refuse(self, state: SessionState, request: Request, refusal: ChatError) -> None:
        tag = request.__struct_config__.tag
        answer = error_answer(
            tag if isinstance(tag, int) else None,
            refusal.code,
            refusal.message,
            retry_after=refusal.retry_after,
            ref=getattr(request, "ref", None),
        )
        state.session.send(Outbound.of(answer))
        if refusal.code in _LOGGED_LIMITS:
            self._refusals.log(
                (refusal.code, state.session.address),
                logging.WARNING,
                "refused %s from %s: %s",
                type(request).__name__,
                state.session.address,
                refusal.message,
            )
        if refusal.disconnect:
            state.session.close(refusal.message)

    @staticmethod
    def _check_sender(state: SessionState, claimed: int | None) -> None:
        if state.user_id is None:
            raise ChatError(ErrorCode.NOT_LOGGED_IN, "log in first")
        if claimed is not None and claimed != state.user_id:
            raise ChatError(
                ErrorCode.SENDER_MISMATCH,
                f"id {claimed} is not the user logged in on this connection",
            )

    # --- registry hooks ---------------------------------------------------------------

    async def _first_session(self, user_id: int) -> None:
        await self.ctx.bus.subscribe(ChannelNames.user(user_id))
        await self.ctx.presence.user_online(user_id)

    async def _last_session(self, user_id: int) -> None:
        await self.ctx.bus.unsubscribe(ChannelNames.user(user_id))
        await self.ctx.group_channels.leave(user_id)
        await self.ctx.presence.user_offline(user_id)

    # --- BusHandler -------------------------------------------------------------------

    def on_bus_message(self, channel: str, payload: bytes) -> None:
        try:
            envelope = decode_envelope(payload)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed bus payload on %s", channel)
            return
        if envelope.origin == self.node_id:
            # This node offered its own messages to its feeds when they were
            # committed; a feed that could not take one then reads the log.
            return
        if envelope.kind == Kind.DELIVER:
            self.ctx.delivery.offer(envelope.user, envelope.pos, Outbound(bytes(envelope.body)))
        elif envelope.kind == Kind.GROUP_DELIVER:
            self.ctx.delivery.offer_entries(envelope.entries, Outbound(bytes(envelope.body)))
        elif envelope.kind == Kind.HEADS:
            self.ctx.delivery.behind(envelope.entries)
        elif envelope.kind == Kind.GROUP_CHANGED:
            self.ctx.groups.invalidate(envelope.group)
            if envelope.user and self.ctx.registry.has(envelope.user):
                self._tasks.start(
                    groups.listen(self.ctx, envelope.group, envelope.user),
                    f"listening on group {envelope.group} for user {envelope.user}",
                )
        elif envelope.kind == Kind.NOTICE:
            self.ctx.delivery.notice(envelope.user, Outbound(bytes(envelope.body)))

    def bus_channels(self) -> Iterable[str]:
        yield GROUPS_CHANNEL
        for user_id in self.ctx.registry.users():
            yield ChannelNames.user(user_id)
        yield from self.ctx.group_channels.channels()

    def on_bus_restored(self) -> None:
        log.info(
            "bus restored on node %s: reading the logs of %d users",
            self.node_id,
            len(self.ctx.registry),
        )
        self.ctx.groups.clear()
        self._tasks.start(self._restore(), "reading group memberships after the bus came back")

    async def _restore(self) -> None:
        """After an outage: listen on the groups joined meanwhile, then read every log.

        Joins announced while the bus was down were not heard: the local
        users' memberships are read again (one query per 500 users) before
        the logs are compared, so nothing published after the comparison
        goes to a channel this node does not listen on.
        """
        try:
            users = list(self.ctx.registry.users())
            for start in range(0, len(users), USERS_PER_QUERY):
                found = await self.ctx.store.memberships(users[start : start + USERS_PER_QUERY])
                await asyncio.gather(
                    *(
                        self.ctx.group_channels.enter(user_id, group_ids)
                        for user_id, group_ids in found.items()
                        if self.ctx.registry.has(user_id)
                    )
                )
        except Exception:
            log.exception("reading group memberships after the bus came back failed")
        self.ctx.delivery.restored()
