"""Friends: symmetric friendship, by consent (docs/protocol.md §2.5).

ADD_FRIEND from A to B is a request: B gets a FRIEND_REQUEST push (and finds
the request in its next login answer); when B sends ADD_FRIEND to A (what a
classic client can do) they become friends. Only friends see each other's
presence, so nobody can watch a stranger come and go by adding them.
"""

from clusterchat.protocol import (
    AddFriend,
    AddFriendAck,
    ErrorCode,
    FriendRequest,
    Outbound,
)
from clusterchat.service.context import Context
from clusterchat.service.errors import ChatError
from clusterchat.service.sessions import SessionState
from clusterchat.store.base import Friendship

__all__ = ["add_friend"]


async def add_friend(ctx: Context, state: SessionState, request: AddFriend) -> None:
    assert state.user_id is not None
    other = request.friendid
    if other == state.user_id:
        raise ChatError(ErrorCode.SELF_FRIEND, "you cannot add yourself as a friend")
    if not await ctx.users.exists(other):
        raise ChatError(ErrorCode.UNKNOWN_USER, f"no user with id {other}")
    limit = ctx.policy.max_friends
    for user_id, whose in ((state.user_id, "you have"), (other, "that user has")):
        if len(await ctx.store.friends_of(user_id)) >= limit:
            raise ChatError(ErrorCode.LIMIT_REACHED, f"{whose} the most friends: {limit}")
    outcome = await ctx.store.request_friendship(state.user_id, other)
    if outcome is Friendship.ALREADY:
        raise ChatError(ErrorCode.ALREADY_FRIENDS, f"user {other} is already a friend")
    if outcome is Friendship.ACCEPTED:
        state.session.send(Outbound.of(AddFriendAck(errno=0, friendid=other)))
        return
    state.session.send(Outbound.of(AddFriendAck(errno=0, friendid=other, pending=True)))
    if outcome is Friendship.REQUESTED:  # asking again pushes nothing new
        ctx.delivery.notify(other, Outbound.of(FriendRequest(id=state.user_id, name=state.name)))
