"""Groups: create, invite and join (docs/protocol.md §2.6-2.7).

Group messages take the one send path (``sending.py``): one log entry per
member but the sender, published once on the group's channel. A join (and a
creation: the creator's first membership) tells every node to drop its
cached members of that group and names the member (``GROUP_CHANGED`` on the
groups channel), so that a node where the member is logged in listens on the
group's channel (``group_channels.py``); the joining node does so before it
answers. An invite-only group
(``invite_only`` at creation) takes only those its creator invited; the
invitee is pushed GROUP_INVITE (not logged: it joins with the group's id).
"""

import contextlib

from clusterchat.bus.base import BusError
from clusterchat.bus.channels import GROUPS_CHANNEL
from clusterchat.protocol import (
    AddGroup,
    AddGroupAck,
    CreateGroup,
    CreateGroupAck,
    ErrorCode,
    GroupInvite,
    Invite,
    InviteAck,
    Outbound,
)
from clusterchat.service import names
from clusterchat.service.context import Context
from clusterchat.service.envelope import encode_group_changed
from clusterchat.service.errors import ChatError
from clusterchat.service.sessions import SessionState
from clusterchat.store.base import NameTaken

__all__ = ["add_group", "create_group", "invite", "joined", "listen"]


async def create_group(ctx: Context, state: SessionState, request: CreateGroup) -> None:
    assert state.user_id is not None
    name = names.normalize(request.groupname, "groupname")
    key = names.look_alike_key(name)
    try:
        group_id = await ctx.store.create_group(
            name, request.groupdesc, state.user_id, name_key=key, invite_only=request.invite_only
        )
    except NameTaken:
        raise ChatError(
            ErrorCode.GROUP_NAME_TAKEN,
            f"a group named {name!r}, or one that looks like it, exists already",
        ) from None
    await joined(ctx, group_id, state.user_id)
    answer = CreateGroupAck(errno=0, groupid=group_id, groupname=name)
    state.session.send(Outbound.of(answer))


async def add_group(ctx: Context, state: SessionState, request: AddGroup) -> None:
    assert state.user_id is not None
    group = await ctx.store.get_group(request.groupid)
    if group is None:
        raise ChatError(ErrorCode.UNKNOWN_GROUP, f"no group with id {request.groupid}")
    if group.invite_only and not await ctx.store.invited(group.id, state.user_id):
        raise ChatError(ErrorCode.NOT_INVITED, f"group {group.id} takes invited users only")
    limit = ctx.policy.max_group_size
    if len(await ctx.store.members(request.groupid)) >= limit:
        raise ChatError(ErrorCode.LIMIT_REACHED, f"group {request.groupid} is full: {limit}")
    if not await ctx.store.add_member(request.groupid, state.user_id):
        raise ChatError(ErrorCode.ALREADY_MEMBER, f"you are already in group {request.groupid}")
    await joined(ctx, request.groupid, state.user_id)
    state.session.send(Outbound.of(AddGroupAck(errno=0, groupid=request.groupid)))


async def invite(ctx: Context, state: SessionState, request: Invite) -> None:
    assert state.user_id is not None
    group = await ctx.store.get_group(request.groupid)
    if group is None:
        raise ChatError(ErrorCode.UNKNOWN_GROUP, f"no group with id {request.groupid}")
    members = await ctx.store.members(group.id)
    if not any(m.user_id == state.user_id and m.role == "creator" for m in members):
        raise ChatError(ErrorCode.NOT_CREATOR, f"only the creator of group {group.id} invites")
    if not await ctx.users.exists(request.userid):
        raise ChatError(ErrorCode.UNKNOWN_USER, f"no user with id {request.userid}")
    if any(m.user_id == request.userid for m in members):
        raise ChatError(ErrorCode.ALREADY_MEMBER, f"user {request.userid} is in the group")
    await ctx.store.invite(group.id, request.userid)
    state.session.send(Outbound.of(InviteAck(errno=0, groupid=group.id, userid=request.userid)))
    push = GroupInvite(groupid=group.id, groupname=group.name, id=state.user_id, name=state.name)
    ctx.delivery.notify(request.userid, Outbound.of(push))


async def joined(ctx: Context, group_id: int, user_id: int) -> None:
    """``user_id`` joined ``group_id`` through this node: listen, then tell the others.

    If the joiner has sessions here, the node listens on the group's channel
    (``listen``) before it announces.

    The announcement waits until the bus took it, so the joiner is answered
    only once the other nodes are being told (a node that reads it a moment
    later may still fan out one message with the old members; cached members
    also expire after 60 s). A bus that is down cannot carry it: the nodes
    clear their caches and read their users' memberships again when their
    bus comes back.
    """
    ctx.groups.invalidate(group_id)
    if ctx.registry.has(user_id):
        await listen(ctx, group_id, user_id)
    with contextlib.suppress(BusError):
        await ctx.delivery.broadcast(
            GROUPS_CHANNEL, encode_group_changed(ctx.node_id, group_id, user_id)
        )


async def listen(ctx: Context, group_id: int, user_id: int) -> None:
    """``user_id``, logged in here, joined ``group_id`` (here or elsewhere): listen on it.

    Then the member's log head is read, so that a message published on the
    channel before the subscription took effect is read from the log rather
    than waiting for the member's next envelope.
    """
    await ctx.group_channels.enter(user_id, [group_id])
    await ctx.delivery.sweep([user_id])
