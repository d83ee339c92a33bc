"""ChatService: the chat rules behind one node (docs/architecture.md).

The transport calls ``open`` for each connection, ``handle`` for each decoded
request in order, and ``closed`` when the connection ends. ``handle`` does the
common chat requests synchronously (no database, no await) and returns None;
anything that must wait (login, a cache miss) comes back as a coroutine that
the transport runs before it handles the connection's next request.

The service is also the bus's handler: envelopes from other nodes arrive in
``on_bus_message``.

Errors: a ``ChatError`` becomes the request's error answer; any other
exception is a bug: logged with its traceback, answered with errno 50, and the
connection lives on.
"""

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

import msgspec

from clusterchat.bus.base import Bus
from clusterchat.presence.base import Presence
from clusterchat.protocol import (
    AddFriend,
    AddGroup,
    CreateGroup,
    ErrorCode,
    GroupChat,
    Limits,
    Login,
    Logout,
    OneChat,
    OneChatAck,
    Outbound,
    Ping,
    Pong,
    Register,
    Request,
    error_answer,
)
from clusterchat.service import accounts, friends, groups
from clusterchat.service.context import Context, Policy
from clusterchat.service.delivery import Delivery, user_channel
from clusterchat.service.envelope import Kind, decode_envelope, encode_envelope
from clusterchat.service.errors import ChatError
from clusterchat.service.ids import chat_time
from clusterchat.service.passwords import PasswordHasher
from clusterchat.service.sessions import Session, SessionRegistry, SessionState
from clusterchat.store.base import Store

__all__ = ["SWEEPER_TASK", "ChatService"]

log = logging.getLogger("clusterchat.service")

Pending = Coroutine[Any, Any, None]

#: The name of the periodic-drain task, which runs for the node's whole life.
SWEEPER_TASK = "clusterchat-sweep"
_USER_PREFIX = "user:"


class ChatService:
    """Chat rules for one node; wired by ``clusterchat.node``."""

    def __init__(
        self,
        *,
        node_id: str,
        store: Store,
        bus: Bus,
        presence: Presence,
        passwords: PasswordHasher | None = None,
        limits: Limits | None = None,
        policy: Policy | None = None,
    ) -> None:
        registry = SessionRegistry(self._first_session, self._last_session)
        self.ctx = Context(
            node_id=node_id,
            store=store,
            bus=bus,
            presence=presence,
            registry=registry,
            delivery=Delivery(node_id, registry, bus, store),
            passwords=passwords or PasswordHasher(),
            limits=limits or Limits(),
            policy=policy or Policy(),
        )
        self._states: set[SessionState] = set()
        self._sweeper: asyncio.Task[None] | None = None

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
        await self.ctx.bus.subscribe(groups.GROUPS_CHANNEL)
        if self.ctx.policy.sweep_interval > 0:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name=SWEEPER_TASK)

    async def _sweep(self) -> None:
        """Drain the store for every local user now and then (see ``Policy.sweep_interval``)."""
        while True:
            await asyncio.sleep(self.ctx.policy.sweep_interval)
            try:
                await self.ctx.delivery.drain(self.ctx.registry.users())
            except Exception:
                log.exception("periodic drain failed; trying again next time")

    async def shutdown(self) -> None:
        """Close every session (their users go offline) and flush what must be stored."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.wait([self._sweeper])
        for state in list(self._states):
            state.session.close("server shutting down")
        for state in list(self._states):
            await self.closed(state)
        await self.ctx.delivery.close()

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
        await self.ctx.registry.remove(state)
        state.end()

    def handle(self, state: SessionState, request: Request) -> Pending | None:
        """Handle one request; return a coroutine to await if it cannot finish at once."""
        try:
            if isinstance(request, OneChat):
                self._check_sender(state, request.id)
                return self._one_chat(state, request)
            if isinstance(request, GroupChat):
                self._check_sender(state, request.id)
                if groups.group_chat(self.ctx, state, request):
                    return None
                return self._guard(state, request, groups.group_chat_slow(self.ctx, state, request))
            if isinstance(request, Ping):
                state.session.send(Outbound.of(Pong(ref=request.ref)))
                return None
            if isinstance(request, Login):
                return self._guard(state, request, self._login(state, request))
            if isinstance(request, Register):
                return self._guard(state, request, accounts.register(self.ctx, state, request))
            self._check_sender(state, request.id)
            if isinstance(request, Logout):
                return self._guard(state, request, accounts.logout(self.ctx, state, request))
            if isinstance(request, AddFriend):
                return self._guard(state, request, friends.add_friend(self.ctx, state, request))
            if isinstance(request, CreateGroup):
                return self._guard(state, request, groups.create_group(self.ctx, state, request))
            if isinstance(request, AddGroup):
                return self._guard(state, request, groups.add_group(self.ctx, state, request))
            raise AssertionError(f"unhandled request {type(request).__name__}")
        except ChatError as exc:
            self._refuse(state, request, exc.code, exc.message)
        except Exception:
            log.exception("bug while handling %s", type(request).__name__)
            self._refuse(state, request, ErrorCode.INTERNAL, "internal server error")
        return None

    async def _guard(self, state: SessionState, request: Request, work: Pending) -> None:
        try:
            await work
        except ChatError as exc:
            self._refuse(state, request, exc.code, exc.message)
        except Exception:
            log.exception("bug while handling %s", type(request).__name__)
            self._refuse(state, request, ErrorCode.INTERNAL, "internal server error")

    @staticmethod
    def _refuse(state: SessionState, request: Request, code: ErrorCode, message: str) -> None:
        tag = request.__struct_config__.tag
        answer = error_answer(tag if isinstance(tag, int) else None, code, message)
        if isinstance(request, OneChat | GroupChat) and request.ref is not None:
            answer = msgspec.structs.replace(answer, ref=request.ref)
        state.session.send(Outbound.of(answer))

    @staticmethod
    def _check_sender(state: SessionState, claimed: int | None) -> None:
        if state.user_id is None:
            raise ChatError(ErrorCode.NOT_LOGGED_IN, "log in first")
        if claimed is not None and claimed != state.user_id:
            raise ChatError(
                ErrorCode.SENDER_MISMATCH,
                f"id {claimed} is not the user logged in on this connection",
            )

    async def _login(self, state: SessionState, request: Login) -> None:
        await accounts.login(self.ctx, state, request)
        log.info("user %d logged in on node %s (%s)", request.id, self.node_id, state.session.peer)

    # --- one-to-one chat --------------------------------------------------------------

    def _one_chat(self, state: SessionState, request: OneChat) -> Pending | None:
        if self.ctx.users.name(request.toid) is None:
            return self._guard(state, request, self._one_chat_slow(state, request))
        self._send_one(state, request)
        return None

    async def _one_chat_slow(self, state: SessionState, request: OneChat) -> None:
        if not await self.ctx.users.exists(request.toid):
            raise ChatError(ErrorCode.UNKNOWN_USER, f"no user with id {request.toid}")
        self._send_one(state, request)

    def _send_one(self, state: SessionState, request: OneChat) -> None:
        assert state.user_id is not None
        mid = self.ctx.ids.next()
        push = Outbound.of(
            OneChat(
                toid=request.toid,
                msg=request.msg,
                id=state.user_id,
                name=state.name,
                time=chat_time(),
                mid=mid,
            )
        )
        envelope = encode_envelope(Kind.DELIVER, self.node_id, mid, push.json)
        self.ctx.delivery.deliver(request.toid, push, mid, envelope)
        if request.ref is not None:
            state.session.send(Outbound.of(OneChatAck(errno=0, mid=mid, ref=request.ref)))

    # --- registry hooks ---------------------------------------------------------------

    async def _first_session(self, user_id: int) -> None:
        await self.ctx.bus.subscribe(user_channel(user_id))
        await self.ctx.presence.user_online(user_id)

    async def _last_session(self, user_id: int) -> None:
        await self.ctx.bus.unsubscribe(user_channel(user_id))
        await self.ctx.presence.user_offline(user_id)

    # --- BusHandler -------------------------------------------------------------------

    def on_bus_message(self, channel: str, payload: bytes) -> None:
        try:
            envelope = decode_envelope(payload)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed bus payload on %s", channel)
            return
        own = envelope.origin == self.node_id
        if envelope.kind == Kind.GROUP_CHANGED:
            if not own:
                self.ctx.groups.invalidate(int(envelope.mid))
            return
        if not channel.startswith(_USER_PREFIX):
            return
        user_id = int(channel[len(_USER_PREFIX) :])
        if envelope.kind == Kind.DELIVER:
            # Our own envelopes come back too: the sessions that had the message
            # locally drop it by id, and a session that logged in here between
            # the local push and the publish gets it now (docs/delivery.md).
            self.ctx.delivery.received(user_id, envelope.mid, bytes(envelope.body), own=own)
        elif envelope.kind == Kind.DRAIN and not own and self.ctx.registry.has(user_id):
            self.ctx.delivery.spawn_drain([user_id])

    def bus_channels(self) -> Iterable[str]:
        yield groups.GROUPS_CHANNEL
        for user_id in self.ctx.registry.users():
            yield user_channel(user_id)

    def on_bus_restored(self) -> None:
        log.info(
            "bus restored on node %s: draining for %d users", self.node_id, len(self.ctx.registry)
        )
        self.ctx.groups.clear()
        self.ctx.delivery.spawn_drain(self.ctx.registry.users())
