"""Message type numbers: the compatibility contract (docs/protocol.md §1).

Values 1-10 are the classic ChatServer protocol and never change meaning.
Extensions start at 100 so that no classic client (which ignores unknown
msgids) nor the popular fork that took 11 reacts to them. An extension reply
to classic request N is numbered 100 + N.
"""

from enum import IntEnum

__all__ = ["MsgId"]


class MsgId(IntEnum):
    """Every ``msgid`` clusterchat sends or accepts."""

    # Classic protocol (PROTOCOL-CLASSIC.md).
    LOGIN = 1
    LOGIN_ACK = 2
    LOGOUT = 3
    REG = 4
    REG_ACK = 5
    ONE_CHAT = 6
    ADD_FRIEND = 7
    CREATE_GROUP = 8
    ADD_GROUP = 9
    GROUP_CHAT = 10

    # Extensions (docs/protocol.md §3).
    ERROR = 100
    LOGOUT_ACK = 103
    ONE_CHAT_ACK = 106
    ADD_FRIEND_ACK = 107
    CREATE_GROUP_ACK = 108
    ADD_GROUP_ACK = 109
    GROUP_CHAT_ACK = 110
    PING = 120
    PONG = 121
    ACK = 130
    FRIEND_REQUEST = 140
    INVITE = 150
    INVITE_ACK = 151
    GROUP_INVITE = 152
