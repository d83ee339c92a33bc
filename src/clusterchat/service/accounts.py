"""Register, log in, log out (docs/protocol.md §2.1-2.3)."""

from clusterchat.protocol import (
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
    encode_entry,
)
from clusterchat.service.context import Context
from clusterchat.service.errors import ChatError
from clusterchat.service.sessions import SessionState
from clusterchat.store.base import NameTaken

__all__ = ["login", "logout", "register"]

_ONLINE, _OFFLINE = "online", "offline"


async def register(ctx: Context, state: SessionState, request: Register) -> None:
    password_hash = await ctx.passwords.hash(request.password)
    try:
        user_id = await ctx.store.create_user(request.name, password_hash)
    except NameTaken:
        raise ChatError(ErrorCode.NAME_TAKEN, "this name is already taken") from None
    ctx.users.remember(user_id, request.name)
    state.session.send(Outbound.of(RegAck(errno=0, id=user_id)))


async def login(ctx: Context, state: SessionState, request: Login) -> None:
    if state.logged_in:
        raise ChatError(ErrorCode.ALREADY_LOGGED_IN, "this connection is already logged in")
    user = await ctx.store.get_user(request.id)
    if not await ctx.passwords.verify(user.password_hash if user else None, request.password):
        raise ChatError(ErrorCode.BAD_CREDENTIALS, "id or password is invalid!")
    assert user is not None
    if ctx.policy.single_session and (
        ctx.registry.has(user.id) or await ctx.presence.online([user.id])
    ):
        raise ChatError(ErrorCode.ALREADY_LOGGED_IN, "this account is using, input another!")

    state.begin_login(user.id, user.name)
    ctx.users.remember(user.id, user.name)
    try:
        await ctx.registry.add(state)
    except BaseException:
        state.end()  # not registered: this connection must not act as logged in
        raise

    friends = await ctx.store.friends_of(user.id)
    groups = await ctx.store.groups_of(user.id)
    people = {f.id for f in friends} | {m.user_id for _, ms in groups for m in ms}
    online = await ctx.presence.online(people)
    # Messages this node is still writing to the store belong in this answer too.
    await ctx.delivery.writer.flush()
    stored = await ctx.store.pending([user.id], ctx.policy.offline_batch)
    assert state.recent is not None
    for message in stored:
        state.recent.add(message.mid)

    def state_of(user_id: int) -> str:
        return _ONLINE if user_id in online or user_id == user.id else _OFFLINE

    answer = LoginAck(
        errno=0,
        id=user.id,
        name=user.name,
        offlinemsg=[message.payload.decode() for message in stored],
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
    )
    if not state.session.send(Outbound.of(answer)):
        # The session went away: the stored messages stay stored, and what was
        # held for it (counted as delivered) is stored too.
        _keep(ctx, user.id, state.fail_login())
        return
    await ctx.store.remove(message.seq for message in stored)
    if refused := state.finish_login():
        _keep(ctx, user.id, refused)
        return
    if len(stored) >= ctx.policy.offline_batch:
        await ctx.delivery.drain([user.id])


def _keep(ctx: Context, user_id: int, refused: list[tuple[str | None, Outbound]]) -> None:
    """Store pushes held for a login that the session then refused."""
    for mid, message in refused:
        if mid is not None:
            ctx.delivery.writer.add(user_id, mid, message.json)


async def logout(ctx: Context, state: SessionState, request: Logout) -> None:
    await ctx.registry.remove(state)
    state.end()
    state.session.send(Outbound.of(LogoutAck(errno=0)))
