"""Register, log in, log out (docs/protocol.md §2.1-2.3)."""

import logging

from clusterchat.protocol import (
    OFFLINE,
    ONLINE,
    Ack,
    ErrorCode,
    FriendEntry,
    GroupEntry,
    Login,
    LoginAck,
    Logout,
    LogoutAck,
    MemberEntry,
    Outbound,
    RegAck,
    Register,
    RequestEntry,
    encode_entry,
)
from clusterchat.service import names
from clusterchat.service.context import Context
from clusterchat.service.errors import ChatError
from clusterchat.service.feed import Feed
from clusterchat.service.sessions import SessionState
from clusterchat.store.base import NameTaken

__all__ = ["ack", "end_session", "login", "logout", "register"]

log = logging.getLogger("clusterchat.service")


async def register(ctx: Context, state: SessionState, request: Register) -> None:
    ctx.attempts.check_register(state)
    ctx.attempts.registered(state)
    async with ctx.admission:
        await _register(ctx, state, request)


async def _register(ctx: Context, state: SessionState, request: Register) -> None:
    name = names.normalize(request.name, "name")
    key = names.look_alike_key(name)
    password_hash = await ctx.passwords.hash(request.password)
    try:
        user_id = await ctx.store.create_user(name, password_hash, name_key=key)
    except NameTaken:
        raise ChatError(
            ErrorCode.REFUSED, "this name is already taken, or one that looks like it"
        ) from None
    ctx.users.remember(user_id, name)
    state.session.send(Outbound.of(RegAck(errno=0, id=user_id)))


async def login(ctx: Context, state: SessionState, request: Login) -> None:
    """Log in; the session then reads the user's log from its device's cursor.

    Order matters (docs/delivery.md §Login): the session is registered (its
    user's channel and its groups' channels subscribed) *before* the log is
    read, so a message is either in what is read or announced afterwards;
    offers that arrive meanwhile only raise the feed's head.
    """
    if state.logged_in:
        raise ChatError(ErrorCode.ALREADY_LOGGED_IN, "this connection is already logged in")
    ctx.attempts.check_login(state, request.id)
    async with ctx.admission:
        if not state.session.closed:  # it may have gone while waiting its turn
            await _login(ctx, state, request)


async def _login(ctx: Context, state: SessionState, request: Login) -> None:
    user = await ctx.store.get_user(request.id)
    if not await ctx.passwords.verify(user.password_hash if user else None, request.password):
        ctx.attempts.login_failed(state, request.id)
        raise ChatError(ErrorCode.REFUSED, "id or password is invalid!")
    assert user is not None
    ctx.attempts.login_succeeded(user.id)
    limit = ctx.policy.max_sessions_per_user
    if len(ctx.registry.local(user.id)) >= limit:
        raise ChatError(
            ErrorCode.LIMIT_REACHED,
            f"too many sessions of this user on this node: {limit}; disconnected",
            disconnect=True,
        )
    if ctx.policy.single_session and (
        ctx.registry.has(user.id) or await ctx.presence.online([user.id])
    ):
        raise ChatError(ErrorCode.ALREADY_LOGGED_IN, "this account is using, input another!")

    state.user_id, state.name, state.device = user.id, user.name, request.device
    feed = state.feed = Feed(
        user.id,
        request.device,
        state.session,
        ctx.store,
        batch=ctx.policy.read_batch,
        on_moved=ctx.cursors.moved,
    )
    ctx.users.remember(user.id, user.name)
    try:
        await ctx.registry.add(state)
    except BaseException:
        state.end()  # not registered: this connection must not act as logged in
        raise

    friends = await ctx.store.friends_of(user.id)
    requests = await ctx.store.friend_requests_to(user.id)
    groups = await ctx.store.groups_of(user.id)
    # Like the user's own channel, its groups' channels are listened on before
    # the log is read (group messages are published once, per group).
    await ctx.group_channels.enter(user.id, [group.id for group, _ in groups])
    people = {f.id for f in friends} | {m.user_id for _, ms in groups for m in ms}
    online = await ctx.presence.online(people)
    feed.begin_at(await _resume_point(ctx, user.id, feed.key, request.after))
    stored = []
    if request.device is None:
        stored = await ctx.store.read(user.id, feed.next - 1, ctx.policy.offline_batch)

    def state_of(user_id: int) -> str:
        return ONLINE if user_id in online or user_id == user.id else OFFLINE

    answer = LoginAck(
        errno=0,
        id=user.id,
        name=user.name,
        offlinemsg=[entry.body.decode() for entry in stored],
        friends=[
            encode_entry(FriendEntry(id=f.id, name=f.name, state=state_of(f.id))) for f in friends
        ],
        groups=[
            encode_entry(
                GroupEntry(
                    id=group.id,
                    groupname=group.name,
                    groupdesc=group.description,
                    users=[
                        encode_entry(
                            MemberEntry(
                                id=m.user_id, name=m.name, role=m.role, state=state_of(m.user_id)
                            )
                        )
                        for m in members
                    ],
                )
            )
            for group, members in groups
        ],
        requests=[encode_entry(RequestEntry(id=r.id, name=r.name)) for r in requests],
        cursor=None if request.device is None else feed.next - 1,
    )
    state.session.send(Outbound.of(answer))
    if stored:
        feed.mark_written(stored[-1].pos)
        ctx.cursors.moved(feed)
    log.info("user %d logged in on node %s (%s)", user.id, ctx.node_id, state.session.peer)
    # An acknowledging device gets everything after its cursor as pushes.
    feed.start(must_read=request.device is not None or len(stored) >= ctx.policy.offline_batch)


async def _resume_point(ctx: Context, user_id: int, key: str, after: int | None) -> int:
    """Where a device's session starts: its cursor, or the furthest device's for a new one.

    A device's own ``after`` counts when it is further, but never past the end
    of the log (a claim beyond it would make the session skip what comes next).
    """
    cursors = await ctx.store.load_cursors(user_id)
    start = cursors.get(key)
    if start is None:
        start = max(cursors.values(), default=0)
    if after is not None and after > start:
        head = (await ctx.store.heads([user_id])).get(user_id, 0)
        start = max(start, min(after, head))
    return start


async def end_session(ctx: Context, state: SessionState) -> None:
    """The session's login ends: save its cursor, leave the registry."""
    feed = state.feed
    if feed is not None:
        feed.stop()
        await feed.stopped()
        await ctx.cursors.save_now(feed)
    await ctx.registry.remove(state)
    state.end()


async def logout(ctx: Context, state: SessionState, request: Logout) -> None:
    await end_session(ctx, state)
    state.session.send(Outbound.of(LogoutAck(errno=0)))


def ack(ctx: Context, state: SessionState, request: Ack) -> None:
    """A device acknowledged everything up to ``request.cursor``."""
    feed = state.feed
    if feed is None or feed.device is None:
        raise ChatError(ErrorCode.INVALID_FIELD, "acknowledgements need a login with a device")
    if not feed.ack(request.cursor):
        raise ChatError(ErrorCode.INVALID_FIELD, f"cursor {request.cursor} was never sent")
