"""Sending a chat message: one path for one-to-one and group messages.

1. Resolve the recipients from the per-node caches (no query per message;
   a cache miss returns a coroutine that queries, then continues here).
2. Build the push once (real sender id and name, server time, message id) and
   submit it to the ``LogWriter``.
3. When the append has committed: answer the sender (``OneChatAck`` /
   ``GroupChatAck`` with ``mid``, ``seq``, ``time``) if it asked (``ref`` or
   ``cid``), and hand the entries to ``Delivery`` (with the group, whose
   channel carries a group message once). A retry of a ``cid`` that
   is already in the log is answered with the original and delivered to
   nobody.

While the writer is ``full``, or the bus has ``delivery.MAX_INFLIGHT`` bytes
of envelopes to answer, the request waits for room: the transport
handles the connection's next requests only after it, and stops reading when
they pile up (back-pressure on the sender).
"""

from collections.abc import Coroutine
from functools import partial
from typing import Any

from clusterchat.protocol import (
    ErrorCode,
    GroupChat,
    GroupChatAck,
    OneChat,
    OneChatAck,
    Outbound,
    encode,
)
from clusterchat.service.context import Context
from clusterchat.service.errors import ChatError
from clusterchat.service.ids import chat_time
from clusterchat.service.sessions import SessionState
from clusterchat.store.base import Appended, NewMessage

__all__ = ["send_chat"]

Pending = Coroutine[Any, Any, None]
ChatRequest = OneChat | GroupChat


def send_chat(ctx: Context, state: SessionState, request: ChatRequest) -> Pending | None:
    """Accept a chat message; None if done at once, else a coroutine to await."""
    recipients = _cached_recipients(ctx, state, request)
    if recipients is None or ctx.writer.full or ctx.delivery.full:
        return _send_slow(ctx, state, request, recipients)
    _submit(ctx, state, request, recipients)
    return None


async def _send_slow(
    ctx: Context, state: SessionState, request: ChatRequest, recipients: tuple[int, ...] | None
) -> None:
    if recipients is None:
        recipients = await _query_recipients(ctx, state, request)
    await ctx.writer.room()
    await ctx.delivery.room()
    _submit(ctx, state, request, recipients)


def _cached_recipients(
    ctx: Context, state: SessionState, request: ChatRequest
) -> tuple[int, ...] | None:
    if isinstance(request, OneChat):
        return (request.toid,) if ctx.users.name(request.toid) is not None else None
    members = ctx.groups.cached(request.groupid)
    return None if members is None else _others(state, request.groupid, members)


async def _query_recipients(
    ctx: Context, state: SessionState, request: ChatRequest
) -> tuple[int, ...]:
    if isinstance(request, OneChat):
        if not await ctx.users.exists(request.toid):
            raise ChatError(ErrorCode.UNKNOWN_USER, f"no user with id {request.toid}")
        return (request.toid,)
    members = await ctx.groups.members(request.groupid)
    if members is None:
        raise ChatError(ErrorCode.UNKNOWN_GROUP, f"no group with id {request.groupid}")
    return _others(state, request.groupid, members)


def _others(state: SessionState, group_id: int, members: frozenset[int]) -> tuple[int, ...]:
    if state.user_id not in members:
        raise ChatError(ErrorCode.NOT_A_MEMBER, f"you are not a member of group {group_id}")
    return tuple(m for m in members if m != state.user_id)


def _submit(
    ctx: Context, state: SessionState, request: ChatRequest, recipients: tuple[int, ...]
) -> None:
    sender = state.user_id
    assert sender is not None
    mid = ctx.ids.next()
    time = chat_time()
    push: OneChat | GroupChat
    if isinstance(request, OneChat):
        low, high = sorted((sender, request.toid))
        conversation = f"u:{low}:{high}"
        push = OneChat(
            toid=request.toid, msg=request.msg, id=sender, name=state.name, time=time, mid=mid
        )
    else:
        conversation = f"g:{request.groupid}"
        push = GroupChat(
            groupid=request.groupid, msg=request.msg, id=sender, name=state.name, time=time, mid=mid
        )
    body = encode(push)
    message = NewMessage(mid, sender, conversation, recipients, time, body, request.cid)
    ctx.writer.submit(message, partial(_committed, ctx, state, request))


def _committed(ctx: Context, state: SessionState, request: ChatRequest, appended: Appended) -> None:
    if not appended.duplicate:
        ctx.delivery.committed(
            appended, request.groupid if isinstance(request, GroupChat) else None
        )
    if request.ref is None and request.cid is None:
        return
    answer: OneChatAck | GroupChatAck
    kind = OneChatAck if isinstance(request, OneChat) else GroupChatAck
    answer = kind(
        errno=0,
        mid=appended.mid,
        seq=appended.seq,
        time=appended.time,
        ref=request.ref,
        cid=request.cid,
    )
    state.session.send(Outbound.of(answer))
