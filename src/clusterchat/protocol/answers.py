"""Which answer carries the outcome of which request (docs/protocol.md §3, §5).

Every request type with an answer of its own gets its errors in that answer
(``errno`` != 0, ``errmsg``); the others get an ``Error`` (msgid 100) naming
the request in ``req``.
"""

from clusterchat.protocol.messages import (
    AddFriendAck,
    AddGroupAck,
    Answer,
    CreateGroupAck,
    Error,
    GroupChatAck,
    InviteAck,
    LoginAck,
    LogoutAck,
    OneChatAck,
    RegAck,
)
from clusterchat.protocol.msgid import MsgId

__all__ = ["error_answer"]

_ANSWER_TO: dict[int, type[Answer]] = {
    MsgId.LOGIN: LoginAck,
    MsgId.REG: RegAck,
    MsgId.LOGOUT: LogoutAck,
    MsgId.ONE_CHAT: OneChatAck,
    MsgId.ADD_FRIEND: AddFriendAck,
    MsgId.CREATE_GROUP: CreateGroupAck,
    MsgId.ADD_GROUP: AddGroupAck,
    MsgId.GROUP_CHAT: GroupChatAck,
    MsgId.INVITE: InviteAck,
}


def error_answer(
    request_msgid: int | None,
    errno: int,
    errmsg: str,
    *,
    retry_after: int | None = None,
    ref: int | None = None,
) -> Answer:
    """The answer reporting ``errno`` for a request of type ``request_msgid``.

    ``ref`` (the request's own) is carried by the chat acks (106, 110).
    """
    answer_type = _ANSWER_TO.get(request_msgid) if request_msgid is not None else None
    if answer_type is None:
        return Error(errno=errno, errmsg=errmsg, retry_after=retry_after, req=request_msgid)
    if answer_type is OneChatAck or answer_type is GroupChatAck:
        return answer_type(errno=errno, errmsg=errmsg, retry_after=retry_after, ref=ref)
    return answer_type(errno=errno, errmsg=errmsg, retry_after=retry_after)
