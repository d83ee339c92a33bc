"""Groups: create and join (docs/protocol.md §2.6-2.7).

Group messages take the one send path (``sending.py``): one log entry per
member but the sender. A join tells every node to drop its cached members of
that group (``GROUP_CHANGED`` on the groups channel).
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
    Outbound,
)
from clusterchat.service import names
from clusterchat.service.context import Context
from clusterchat.service.envelope import encode_group_changed
from clusterchat.service.errors import ChatError
from clusterchat.service.sessions import SessionState
from clusterchat.store.base import NameTaken

__all__ = ["add_group", "create_group"]


async def create_group(ctx: Context, state: SessionState, request: CreateGroup) -> None:
    assert state.user_id is not None
    name = names.normalize(request.groupname, "groupname")
    key = names.look_alike_key(name)
    try:
        group_id = await ctx.store.create_group(
            name, request.groupdesc, state.user_id, name_key=key
        )
    except NameTaken:
        raise ChatError(
            ErrorCode.GROUP_NAME_TAKEN,
            f"a group named {name!r}, or one that looks like it, exists already",
        ) from None
    answer = CreateGroupAck(errno=0, groupid=group_id, groupname=name)
    state.session.send(Outbound.of(answer))


async def add_group(ctx: Context, state: SessionState, request: AddGroup) -> None:
    assert state.user_id is not None
    if await ctx.store.get_group(request.groupid) is None:
        raise ChatError(ErrorCode.UNKNOWN_GROUP, f"no group with id {request.groupid}")
    limit = ctx.policy.max_group_size
    if len(await ctx.store.members(request.groupid)) >= limit:
        raise ChatError(ErrorCode.LIMIT_REACHED, f"group {request.groupid} is full: {limit}")
    if not await ctx.store.add_member(request.groupid, state.user_id):
        raise ChatError(ErrorCode.ALREADY_MEMBER, f"you are already in group {request.groupid}")
    ctx.groups.invalidate(request.groupid)
    await _announce(ctx, request.groupid)
    state.session.send(Outbound.of(AddGroupAck(errno=0, groupid=request.groupid)))


async def _announce(ctx: Context, group_id: int) -> None:
    """Tell every node to drop its cached members of ``group_id``.

    Waits until the bus took the notice, so the joiner is answered only once
    the other nodes are being told (a node that reads it a moment later may
    still fan out one message with the old members; cached members also
    expire after 60 s). A bus that is down cannot carry it: the nodes clear
    their caches when their bus comes back.
    """
    with contextlib.suppress(BusError):
        await ctx.delivery.broadcast(GROUPS_CHANNEL, encode_group_changed(ctx.node_id, group_id))
