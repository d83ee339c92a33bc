"""Every message of the wire protocol, declared once (docs/protocol.md §2-3).

Each type is a msgspec Struct tagged by its integer ``msgid``. Server, client
library and tests all use these types. Field names are the classic ones; fields
that the classic protocol has but clusterchat does not trust (the sender ``id``
and ``name`` of a chat request) are optional on input and always filled in by
the server on output.

The nested entries of a login answer (friends, groups, members) travel as JSON
*strings* inside arrays, because the classic client parses them that way; the
``*Entry`` structs describe what those strings contain.
"""

from typing import Annotated

import msgspec

from clusterchat.protocol.msgid import MsgId

__all__ = [
    "MAX_ID",
    "MAX_POSITION",
    "OFFLINE",
    "ONLINE",
    "REQUEST_TYPES",
    "SERVER_MESSAGE_TYPES",
    "Ack",
    "AddFriend",
    "AddFriendAck",
    "AddGroup",
    "AddGroupAck",
    "Answer",
    "ChatMessage",
    "CreateGroup",
    "CreateGroupAck",
    "Error",
    "FriendEntry",
    "FriendRequest",
    "GroupChat",
    "GroupChatAck",
    "GroupEntry",
    "GroupInvite",
    "Invite",
    "InviteAck",
    "Login",
    "LoginAck",
    "Logout",
    "LogoutAck",
    "MemberEntry",
    "Message",
    "OneChat",
    "OneChatAck",
    "Ping",
    "Pong",
    "RegAck",
    "Register",
    "Request",
    "RequestEntry",
    "ServerMessage",
]


#: The largest user or group id: what a signed 32-bit column holds, the
#: narrowest integer of the supported databases (PostgreSQL ``integer``).
MAX_ID = 2**31 - 1
#: The largest log position (``cursor``, ``after``): a signed 64-bit column.
MAX_POSITION = 2**63 - 1
#: A user's ``state`` on the wire: of friends and members in a login answer,
#: and of the recipient in the answer to a one-to-one message.
ONLINE = "online"
OFFLINE = "offline"

# Checked while decoding, before any request reaches the service or the store
# (an out-of-range value is answered errno 13, docs/protocol.md §4).
Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
Position = Annotated[int, msgspec.Meta(ge=0, le=MAX_POSITION)]
#: A client's correlation number, echoed back as it came: any signed 64-bit integer.
Ref = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class Message(
    msgspec.Struct, tag_field="msgid", omit_defaults=True, frozen=True, kw_only=True, gc=False
):
    """Base of every wire message; ``msgid`` is the tag."""


# --- Requests (client -> server) -------------------------------------------------------


class Login(Message, tag=int(MsgId.LOGIN), frozen=True):
    """Log in. ``device`` opts in to acknowledged delivery (docs/protocol.md §3.2).

    A client that names its ``device`` receives pushes carrying ``cursor`` (its
    position in the user's log), acknowledges them with ``Ack``, and a later
    session of the same device continues after the last acknowledged cursor, or
    after ``after`` (the last cursor the device received) when that is further.
    """

    id: Id
    password: str
    device: str | None = None
    after: Position | None = None


class Logout(Message, tag=int(MsgId.LOGOUT), frozen=True):
    id: Id | None = None


class Register(Message, tag=int(MsgId.REG), frozen=True):
    name: str
    password: str


class OneChat(Message, tag=int(MsgId.ONE_CHAT), frozen=True):
    """A one-to-one chat message: a request from the sender, a push to the recipient.

    On a request only ``toid`` and ``msg`` matter; ``id``, if given, must be the
    logged-in user. On a push the server sets ``id``, ``name`` (the real
    sender), ``time`` (server clock, ``YYYY-MM-DD HH:MM:SS``) and ``mid`` (the
    cluster-unique message id). ``ref`` is the client's own correlation number,
    echoed in the ``OneChatAck``; it never reaches the recipient. ``cid`` is the
    client's own message id: a retry with the same ``cid`` is answered with the
    original message's ack and never stored or delivered twice. On a push to a
    session that opted in to acknowledgements, ``cursor`` is the message's
    position in the recipient's log.
    """

    toid: Id
    msg: str
    id: Id | None = None
    name: str | None = None
    time: str | None = None
    mid: str | None = None
    ref: Ref | None = None
    cid: str | None = None
    cursor: Position | None = None


class AddFriend(Message, tag=int(MsgId.ADD_FRIEND), frozen=True):
    friendid: Id
    id: Id | None = None


class CreateGroup(Message, tag=int(MsgId.CREATE_GROUP), frozen=True):
    groupname: str
    groupdesc: str = ""
    id: Id | None = None
    #: Extension: joining needs the creator's invitation (``Invite``).
    invite_only: bool = False


class AddGroup(Message, tag=int(MsgId.ADD_GROUP), frozen=True):
    groupid: Id
    id: Id | None = None


class GroupChat(Message, tag=int(MsgId.GROUP_CHAT), frozen=True):
    """A group chat message; fields as in ``OneChat`` with ``groupid`` for ``toid``."""

    groupid: Id
    msg: str
    id: Id | None = None
    name: str | None = None
    time: str | None = None
    mid: str | None = None
    ref: Ref | None = None
    cid: str | None = None
    cursor: Position | None = None


class Ping(Message, tag=int(MsgId.PING), frozen=True):
    """Keep-alive (extension); answered by ``Pong`` with the same ``ref``."""

    ref: Ref | None = None


class Invite(Message, tag=int(MsgId.INVITE), frozen=True):
    """The creator of an invite-only group lets ``userid`` join it (extension)."""

    groupid: Id
    userid: Id


class Ack(Message, tag=int(MsgId.ACK), frozen=True):
    """Cumulative acknowledgement (extension): the device has every push up to ``cursor``.

    Only for sessions that logged in with a ``device``; not answered.
    """

    cursor: Position


Request = (
    Login
    | Logout
    | Register
    | OneChat
    | AddFriend
    | CreateGroup
    | AddGroup
    | GroupChat
    | Ping
    | Ack
    | Invite
)
REQUEST_TYPES: tuple[type[Message], ...] = (
    Login,
    Logout,
    Register,
    OneChat,
    AddFriend,
    CreateGroup,
    AddGroup,
    GroupChat,
    Ping,
    Ack,
    Invite,
)

ChatMessage = OneChat | GroupChat


# --- Answers (server -> client) --------------------------------------------------------


class Answer(Message, frozen=True):
    """Base of the replies that say ok (``errno`` 0) or why not.

    ``retry_after`` (seconds) comes with errno 18: the attempt may succeed
    after that long (docs/protocol.md §5).
    """

    errno: int
    errmsg: str | None = None
    retry_after: int | None = None


class LoginAck(Answer, tag=int(MsgId.LOGIN_ACK), frozen=True):
    """Classic login answer. The lists hold JSON texts and are omitted when empty.

    ``requests`` (extension) lists who asked this user to be friends and waits
    for an answer (``RequestEntry`` texts).
    """

    id: int | None = None
    name: str | None = None
    offlinemsg: list[str] = []
    friends: list[str] = []
    groups: list[str] = []
    requests: list[str] = []
    cursor: int | None = None


class RegAck(Answer, tag=int(MsgId.REG_ACK), frozen=True):
    id: int | None = None


class LogoutAck(Answer, tag=int(MsgId.LOGOUT_ACK), frozen=True):
    pass


class OneChatAck(Answer, tag=int(MsgId.ONE_CHAT_ACK), frozen=True):
    """Sent on a refused chat message, and on an accepted one that carried ``ref`` or ``cid``.

    An accepted message is acknowledged once it is committed to the log: ``mid``
    (server message id), ``seq`` (its position in the conversation), ``time``
    (server clock), the request's ``ref`` and ``cid``, and ``state``: whether
    a session of the recipient was online to push it to (``"online"``) or it
    waits in the log for the recipient's next login (``"offline"``); absent
    when the bus could not tell, and for a retried ``cid`` (docs/protocol.md §3.1).
    """

    mid: str | None = None
    seq: int | None = None
    time: str | None = None
    ref: int | None = None
    cid: str | None = None
    state: str | None = None


class AddFriendAck(Answer, tag=int(MsgId.ADD_FRIEND_ACK), frozen=True):
    """``pending``: the request waits for the other user's consent (docs/protocol.md §2.5)."""

    friendid: int | None = None
    pending: bool | None = None


class InviteAck(Answer, tag=int(MsgId.INVITE_ACK), frozen=True):
    groupid: int | None = None
    userid: int | None = None


class GroupInvite(Message, tag=int(MsgId.GROUP_INVITE), frozen=True):
    """Pushed to a user whom ``id`` (``name``) invited into group ``groupid``."""

    groupid: int
    groupname: str
    id: int
    name: str


class FriendRequest(Message, tag=int(MsgId.FRIEND_REQUEST), frozen=True):
    """Pushed to a user whom ``id`` (named ``name``) asked to be friends."""

    id: int
    name: str


class CreateGroupAck(Answer, tag=int(MsgId.CREATE_GROUP_ACK), frozen=True):
    groupid: int | None = None
    groupname: str | None = None


class AddGroupAck(Answer, tag=int(MsgId.ADD_GROUP_ACK), frozen=True):
    groupid: int | None = None


class GroupChatAck(Answer, tag=int(MsgId.GROUP_CHAT_ACK), frozen=True):
    """As ``OneChatAck``, for group messages (``seq`` is the position in the group)."""

    mid: str | None = None
    seq: int | None = None
    time: str | None = None
    ref: int | None = None
    cid: str | None = None


class Error(Answer, tag=int(MsgId.ERROR), frozen=True):
    """An error for a request that has no answer type of its own (or none readable).

    ``req`` is the ``msgid`` of the offending request when it could be read.
    """

    req: int | None = None


class Pong(Message, tag=int(MsgId.PONG), frozen=True):
    ref: int | None = None


ServerMessage = (
    LoginAck
    | RegAck
    | OneChat
    | GroupChat
    | LogoutAck
    | OneChatAck
    | AddFriendAck
    | CreateGroupAck
    | AddGroupAck
    | GroupChatAck
    | Error
    | Pong
    | FriendRequest
    | InviteAck
    | GroupInvite
)
SERVER_MESSAGE_TYPES: tuple[type[Message], ...] = (
    LoginAck,
    RegAck,
    OneChat,
    GroupChat,
    LogoutAck,
    OneChatAck,
    AddFriendAck,
    CreateGroupAck,
    AddGroupAck,
    GroupChatAck,
    Error,
    Pong,
    FriendRequest,
    InviteAck,
    GroupInvite,
)


# --- Entries carried as JSON text inside LoginAck ----------------------------------------


class FriendEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    state: str


class RequestEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str


class MemberEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    role: str
    state: str


class GroupEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    groupname: str
    groupdesc: str
    users: list[str]
