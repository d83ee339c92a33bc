"""Protocol errors and the error codes of the wire contract.

Exception tree::

    ProtocolError            (abstract: never raised itself)
    ├── FramingError         the byte stream cannot be resynchronised: reply, then close
    └── InvalidMessage       one frame is unusable: reply with an error, keep the connection

Service-level refusals (bad password, not a member, ...) are not protocol
errors; they live in ``clusterchat.service.errors`` and share the ``ErrorCode``
numbering below.
"""

from enum import IntEnum

__all__ = ["ErrorCode", "FramingError", "InvalidMessage", "ProtocolError"]


class ErrorCode(IntEnum):
    """``errno`` values (docs/protocol.md §5). 0 means success."""

    OK = 0
    # Classic values, kept for LOGIN_ACK / REG_ACK: 1 is any refused login
    # (wrong id or password) or registration (the name is taken).
    REFUSED = 1
    ALREADY_LOGGED_IN = 2
    # Input that cannot be used.
    MALFORMED_JSON = 10
    NOT_AN_OBJECT = 11
    UNKNOWN_MSGID = 12
    INVALID_FIELD = 13
    FRAME_TOO_LARGE = 14
    TOO_DEEP = 15
    FLOODING = 16
    # Limits (docs/security.md).
    TOO_MANY_CONNECTIONS = 17
    TRY_LATER = 18
    LIMIT_REACHED = 19
    # Session rules.
    NOT_LOGGED_IN = 20
    SENDER_MISMATCH = 21
    # Chat rules.
    UNKNOWN_USER = 30
    UNKNOWN_GROUP = 31
    ALREADY_FRIENDS = 32
    SELF_FRIEND = 33
    GROUP_NAME_TAKEN = 34
    ALREADY_MEMBER = 35
    NOT_A_MEMBER = 36
    NOT_INVITED = 38
    NOT_CREATOR = 39
    # Server side.
    INTERNAL = 50
    SLOW_CONSUMER = 51
    SHUTTING_DOWN = 52


class ProtocolError(Exception):
    """Base of the errors raised while turning bytes into messages.

    Attributes:
        code: The ``errno`` to put in the error reply.
        request_msgid: The ``msgid`` of the offending request when it could be
            read, so that the reply can use that request's answer type.
    """

    code: ErrorCode
    closes_connection: bool = False

    def __init__(self, code: ErrorCode, message: str, request_msgid: int | None = None) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise FramingError or InvalidMessage")
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_msgid = request_msgid


class FramingError(ProtocolError):
    """The stream is broken (frame too large, nesting too deep): close after replying."""

    closes_connection = True


class InvalidMessage(ProtocolError):
    """One frame is malformed or invalid: reply with an error, the connection stays.

    ``ref`` is the request's own ``ref`` when it could be read (a chat's
    refusal carries it, as docs/protocol.md §3.1 says).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        request_msgid: int | None = None,
        *,
        ref: int | None = None,
    ) -> None:
        super().__init__(code, message, request_msgid)
        self.ref = ref
