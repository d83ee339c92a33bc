"""Friends: symmetric friendship (docs/protocol.md §2.5)."""

from clusterchat.protocol import AddFriend, AddFriendAck, ErrorCode, Outbound
from clusterchat.service.context import Context
from clusterchat.service.errors import ChatError
from clusterchat.service.sessions import SessionState

__all__ = ["add_friend"]


async def add_friend(ctx: Context, state: SessionState, request: AddFriend) -> None:
    assert state.user_id is not None
    if request.friendid == state.user_id:
        raise ChatError(ErrorCode.SELF_FRIEND, "you cannot add yourself as a friend")
    if not await ctx.users.exists(request.friendid):
        raise ChatError(ErrorCode.UNKNOWN_USER, f"no user with id {request.friendid}")
    limit = ctx.policy.max_friends
    for user_id, whose in ((state.user_id, "you have"), (request.friendid, "that user has")):
        if len(await ctx.store.friends_of(user_id)) >= limit:
            raise ChatError(ErrorCode.LIMIT_REACHED, f"{whose} the most friends: {limit}")
    if not await ctx.store.add_friendship(state.user_id, request.friendid):
        raise ChatError(ErrorCode.ALREADY_FRIENDS, f"user {request.friendid} is already a friend")
    state.session.send(Outbound.of(AddFriendAck(errno=0, friendid=request.friendid)))
