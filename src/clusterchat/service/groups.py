"""Groups: create, join, and group chat (docs/protocol.md §2.6-2.8).

Fan-out: a group message is encoded once, then delivered to each member but
the sender through the same path as a one-to-one message (local sessions,
one pipelined PUBLISH per member, store for whoever nobody had). Members come
from the per-node ``GroupCache``, never from a query per message.
"""

from clusterchat.protocol import (
    AddGroup,
    AddGroupAck,
    CreateGroup,
    CreateGroupAck,
    ErrorCode,
    GroupChat,
    GroupChatAck,
    Outbound,
)
from clusterchat.service.context import Context
from clusterchat.service.envelope import Kind, encode_envelope
from clusterchat.service.errors import ChatError
from clusterchat.service.ids import chat_time
from clusterchat.service.sessions import SessionState
from clusterchat.store.base import NameTaken

__all__ = ["GROUPS_CHANNEL", "add_group", "create_group", "group_chat", "group_chat_slow"]

#: Every node listens here for membership changes.
GROUPS_CHANNEL = "groups"


async def create_group(ctx: Context, state: SessionState, request: CreateGroup) -> None:
    assert state.user_id is not None
    try:
        group_id = await ctx.store.create_group(request.groupname, request.groupdesc, state.user_id)
    except NameTaken:
        raise ChatError(
            ErrorCode.GROUP_NAME_TAKEN, f"a group named {request.groupname!r} exists already"
        ) from None
    answer = CreateGroupAck(errno=0, groupid=group_id, groupname=request.groupname)
    state.session.send(Outbound.of(answer))


async def add_group(ctx: Context, state: SessionState, request: AddGroup) -> None:
    assert state.user_id is not None
    if await ctx.store.get_group(request.groupid) is None:
        raise ChatError(ErrorCode.UNKNOWN_GROUP, f"no group with id {request.groupid}")
    if not await ctx.store.add_member(request.groupid, state.user_id):
        raise ChatError(ErrorCode.ALREADY_MEMBER, f"you are already in group {request.groupid}")
    ctx.groups.invalidate(request.groupid)
    _announce(ctx, request.groupid)
    state.session.send(Outbound.of(AddGroupAck(errno=0, groupid=request.groupid)))


def _announce(ctx: Context, group_id: int) -> None:
    """Tell every node to drop its cached members of ``group_id``."""
    ctx.delivery.broadcast(
        GROUPS_CHANNEL, encode_envelope(Kind.GROUP_CHANGED, ctx.node_id, str(group_id))
    )


def group_chat(ctx: Context, state: SessionState, request: GroupChat) -> bool:
    """Deliver a group message if the members are cached; False means "call the slow path"."""
    members = ctx.groups.cached(request.groupid)
    if members is None:
        return False
    _fan_out(ctx, state, request, members)
    return True


async def group_chat_slow(ctx: Context, state: SessionState, request: GroupChat) -> None:
    members = await ctx.groups.members(request.groupid)
    if members is None:
        raise ChatError(ErrorCode.UNKNOWN_GROUP, f"no group with id {request.groupid}")
    _fan_out(ctx, state, request, members)


def _fan_out(
    ctx: Context, state: SessionState, request: GroupChat, members: frozenset[int]
) -> None:
    sender = state.user_id
    assert sender is not None
    if sender not in members:
        raise ChatError(ErrorCode.NOT_A_MEMBER, f"you are not a member of group {request.groupid}")
    mid = ctx.ids.next()
    push = Outbound.of(
        GroupChat(
            groupid=request.groupid,
            msg=request.msg,
            id=sender,
            name=state.name,
            time=chat_time(),
            mid=mid,
        )
    )
    envelope = encode_envelope(Kind.DELIVER, ctx.node_id, mid, push.json)
    for member in members:
        if member != sender:
            ctx.delivery.deliver(member, push, mid, envelope)
    if request.ref is not None:
        state.session.send(Outbound.of(GroupChatAck(errno=0, mid=mid, ref=request.ref)))
