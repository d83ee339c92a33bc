"""The wire protocol, sans I/O: bytes in, typed messages out, and back.

Nothing here touches a socket, an event loop or a logging handler; the
transport feeds received bytes to ``JsonStreamDecoder``, decodes each frame
with ``decode_request`` and writes ``Outbound`` renderings.
"""

from clusterchat.protocol.answers import error_answer
from clusterchat.protocol.codec import (
    Outbound,
    decode_request,
    decode_server_message,
    encode,
    encode_entry,
    split_classic,
)
from clusterchat.protocol.errors import ErrorCode, FramingError, InvalidMessage, ProtocolError
from clusterchat.protocol.framing import JsonStreamDecoder, classic_frame, ndjson_line
from clusterchat.protocol.limits import CLASSIC_FRAME_MAX, Limits
from clusterchat.protocol.messages import (
    Ack,
    AddFriend,
    AddFriendAck,
    AddGroup,
    AddGroupAck,
    Answer,
    ChatMessage,
    CreateGroup,
    CreateGroupAck,
    Error,
    FriendEntry,
    GroupChat,
    GroupChatAck,
    GroupEntry,
    Login,
    LoginAck,
    Logout,
    LogoutAck,
    MemberEntry,
    Message,
    OneChat,
    OneChatAck,
    Ping,
    Pong,
    RegAck,
    Register,
    Request,
    ServerMessage,
)
from clusterchat.protocol.msgid import MsgId

__all__ = [
    "CLASSIC_FRAME_MAX",
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
    "ErrorCode",
    "FramingError",
    "FriendEntry",
    "GroupChat",
    "GroupChatAck",
    "GroupEntry",
    "InvalidMessage",
    "JsonStreamDecoder",
    "Limits",
    "Login",
    "LoginAck",
    "Logout",
    "LogoutAck",
    "MemberEntry",
    "Message",
    "MsgId",
    "OneChat",
    "OneChatAck",
    "Outbound",
    "Ping",
    "Pong",
    "ProtocolError",
    "RegAck",
    "Register",
    "Request",
    "ServerMessage",
    "classic_frame",
    "decode_request",
    "decode_server_message",
    "encode",
    "encode_entry",
    "error_answer",
    "ndjson_line",
    "split_classic",
]
