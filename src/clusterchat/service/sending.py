"""Sending a chat message: one path for one-to-one and group messages.

1. Resolve the recipients from the per-node caches (no query per message;
   a cache miss returns a coroutine that queries, then continues here).
2. Build the push once (real sender id and name, server time, message id) and
   submit it to the ``LogWriter``.
3. When the append has committed: hand the entries to ``Delivery`` (with
   the group, whose channel carries a group message once), and answer the
   sender (``OneChatAck`` / ``GroupChatAck`` with ``mid``, ``seq``, ``time``)
   if it asked (``ref`` or ``cid``). The answer to a one-to-one message
   also says whether its recipient was online (``state``): it waits for the
   bus's count of the nodes that received the envelope (at most
   ``STATE_WAIT``; then it goes without), and the session's answers keep the
   order of their messages meanwhile (``SessionState.reserve``). A retry of
   a ``cid`` that is already in the log is answered with the original and
   delivered to nobody.

While the writer is ``full``, or the bus has ``delivery.MAX_INFLIGHT`` bytes
of envelopes to answer, the request waits for room: the transport
handles the connection's next requests only after it, and stops reading when
they pile up (back-pressure on the sender).
"""

import asyncio
from collections.abc import Coroutine
from functools import partial
from typing import Any

import msgspec

from clusterchat.protocol import (
    OFFLINE,
    ONLINE,
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
from clusterchat.service.sessions import PendingAnswer, SessionState
from clusterchat.store.base import Appended, NewMessage

__all__ = ["STATE_WAIT", "send_chat"]

#: Seconds the answer to a one-to-one message waits for the bus to say
#: whether its recipient was online; then it is sent without ``state``
#: (the bus is slow or down: the message is in the log either way).
STATE_WAIT = 0.25

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
    acked = request.ref is not None or request.cid is not None
    if not acked or appended.duplicate or isinstance(request, GroupChat):
        if not appended.duplicate:
            group = request.groupid if isinstance(request, GroupChat) else None
            ctx.delivery.committed(appended, group)
        if acked:
            state.answer(Outbound.of(_ack(request, appended)))
        return
    # An acknowledged one-to-one message: its answer waits for the bus's count.
    pending = state.reserve()
    timer = asyncio.get_running_loop().call_later(
        STATE_WAIT, _answer_one, state, pending, request, appended, None
    )

    def receivers(count: int | None) -> None:
        timer.cancel()
        _answer_one(state, pending, request, appended, count)

    ctx.delivery.committed(appended, None, receivers)


def _answer_one(
    state: SessionState,
    pending: PendingAnswer,
    request: OneChat,
    appended: Appended,
    receivers: int | None,
) -> None:
    """Fill the answer to a one-to-one message: ``state`` from the bus's count
    of nodes that received it (None: unknown)."""
    online = None if receivers is None else ONLINE if receivers else OFFLINE
    state.fill(pending, Outbound.of(_ack(request, appended, online)))


def _ack(
    request: ChatRequest, appended: Appended, online: str | None = None
) -> OneChatAck | GroupChatAck:
    """The answer to an accepted message (``online``: a one-to-one message's
    recipient's ``state``)."""
    kind = OneChatAck if isinstance(request, OneChat) else GroupChatAck
    answer = kind(
        errno=0,
        mid=appended.mid,
        seq=appended.seq,
        time=appended.time,
        ref=request.ref,
        cid=request.cid,
    )
    if isinstance(answer, OneChatAck) and online is not None:
        return msgspec.structs.replace(answer, state=online)
    return answer
