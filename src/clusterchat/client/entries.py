"""Decoding the lists of a login answer, which travel as JSON texts (PROTOCOL-CLASSIC.md)."""

from typing import Final, TypeVar

import msgspec

from clusterchat.protocol import (
    ErrorCode,
    FriendEntry,
    GroupChat,
    GroupEntry,
    InvalidMessage,
    LoginAck,
    MemberEntry,
    MsgId,
    OneChat,
    RequestEntry,
)

__all__ = ["friend_requests", "friends", "groups", "offline_messages"]

_FRIEND_DECODER: Final = msgspec.json.Decoder(FriendEntry)
_REQUEST_DECODER: Final = msgspec.json.Decoder(RequestEntry)
_GROUP_DECODER: Final = msgspec.json.Decoder(GroupEntry)
_MEMBER_DECODER: Final = msgspec.json.Decoder(MemberEntry)
_CHAT_DECODER: Final = msgspec.json.Decoder(OneChat | GroupChat)


def friends(ack: LoginAck) -> list[FriendEntry]:
    """Decode the friend list of a login answer.

    Raises:
        InvalidMessage: An entry is not a friend entry's JSON text.
    """
    return [_decode_entry(_FRIEND_DECODER, text, "friends") for text in ack.friends]


def friend_requests(ack: LoginAck) -> list[RequestEntry]:
    """Decode who asked the user to be friends and waits (a login answer's ``requests``).

    Raises:
        InvalidMessage: An entry is not a request entry's JSON text.
    """
    return [_decode_entry(_REQUEST_DECODER, text, "requests") for text in ack.requests]


def groups(ack: LoginAck) -> list[tuple[GroupEntry, list[MemberEntry]]]:
    """Decode the group list of a login answer, with each group's members.

    Raises:
        InvalidMessage: An entry is not a group (or member) entry's JSON text.
    """
    result: list[tuple[GroupEntry, list[MemberEntry]]] = []
    for text in ack.groups:
        group = _decode_entry(_GROUP_DECODER, text, "groups")
        members = [_decode_entry(_MEMBER_DECODER, user, "users") for user in group.users]
        result.append((group, members))
    return result


def offline_messages(ack: LoginAck) -> list[OneChat | GroupChat]:
    """Decode the messages stored for the user while offline, oldest first.

    Raises:
        InvalidMessage: An entry is not a chat message's JSON text.
    """
    return [_decode_entry(_CHAT_DECODER, text, "offlinemsg") for text in ack.offlinemsg]


_E = TypeVar("_E")


def _decode_entry(decoder: msgspec.json.Decoder[_E], text: str, field: str) -> _E:
    try:
        return decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise InvalidMessage(
            ErrorCode.INVALID_FIELD, f"bad entry in {field}: {exc}", MsgId.LOGIN_ACK
        ) from None
