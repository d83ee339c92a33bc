"""Frames to typed messages and back (docs/protocol.md §2, §4).

``decode_request`` turns one frame from ``JsonStreamDecoder`` into a typed
request or raises ``InvalidMessage`` saying precisely what is wrong.
``encode`` writes the classic server's JSON: compact, keys sorted, UTF-8.
``Outbound`` holds one encoded message and renders it lazily for each kind of
peer, so a message fanned out to many sessions is encoded once.
"""

from typing import Any

import msgspec

from clusterchat.protocol.errors import ErrorCode, InvalidMessage
from clusterchat.protocol.framing import classic_frame, ndjson_line
from clusterchat.protocol.limits import CLASSIC_FRAME_MAX, Limits
from clusterchat.protocol.messages import (
    REQUEST_TYPES,
    SERVER_MESSAGE_TYPES,
    AddFriend,
    AddGroup,
    CreateGroup,
    GroupChat,
    Login,
    LoginAck,
    Message,
    OneChat,
    Register,
    Request,
    ServerMessage,
)

__all__ = [
    "Outbound",
    "decode_request",
    "decode_server_message",
    "encode",
    "encode_entry",
    "split_classic",
]

_REQUEST_DECODER = msgspec.json.Decoder(Request)
_SERVER_DECODER = msgspec.json.Decoder(ServerMessage)
_ANY_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder(order="sorted")
_REQUEST_TAGS = frozenset(t.__struct_config__.tag for t in REQUEST_TYPES)
_SERVER_TAGS = frozenset(t.__struct_config__.tag for t in SERVER_MESSAGE_TYPES)


def encode(message: Message | msgspec.Struct) -> bytes:
    """Encode compactly with sorted keys and raw UTF-8, as the classic server did."""
    return _ENCODER.encode(message)


def encode_entry(entry: msgspec.Struct) -> str:
    """Encode a login-answer entry (friend, group, member) as the JSON text it travels as."""
    return _ENCODER.encode(entry).decode()


def decode_request(frame: bytes, limits: Limits) -> Request:
    """Decode one client frame into a request and check it against the limits.

    Raises:
        InvalidMessage: the frame is not JSON, not an object, has no known
            ``msgid``, or has a missing, mistyped or oversized field. The
            connection stays usable.
    """
    try:
        request: Request = _REQUEST_DECODER.decode(frame)
    except msgspec.DecodeError as exc:
        raise _explain(frame, exc, _REQUEST_TAGS) from None
    _check_limits(request, limits)
    return request


def decode_server_message(frame: bytes) -> ServerMessage:
    """Decode one server frame (client side).

    Raises:
        InvalidMessage: as for ``decode_request``.
    """
    try:
        message: ServerMessage = _SERVER_DECODER.decode(frame)
    except msgspec.DecodeError as exc:
        raise _explain(frame, exc, _SERVER_TAGS) from None
    return message


def _explain(frame: bytes, exc: msgspec.DecodeError, known: frozenset[Any]) -> InvalidMessage:
    """Turn a decoder failure into the most useful error reply (error path only)."""
    try:
        value = _ANY_DECODER.decode(frame)
    except msgspec.DecodeError:
        return InvalidMessage(ErrorCode.MALFORMED_JSON, "malformed JSON")
    if not isinstance(value, dict):
        return InvalidMessage(ErrorCode.NOT_AN_OBJECT, "a message must be a JSON object")
    msgid = value.get("msgid")
    if not isinstance(msgid, int) or isinstance(msgid, bool):
        return InvalidMessage(ErrorCode.INVALID_FIELD, "missing or non-integer msgid")
    if msgid not in known:
        return InvalidMessage(ErrorCode.UNKNOWN_MSGID, f"unknown msgid {msgid}", msgid)
    ref = value.get("ref")
    if not isinstance(ref, int) or isinstance(ref, bool) or not -(2**63) <= ref < 2**63:
        ref = None
    return InvalidMessage(ErrorCode.INVALID_FIELD, str(exc), msgid, ref=ref)


def _check_limits(request: Request, limits: Limits) -> None:
    if isinstance(request, OneChat | GroupChat):
        _bound(request, "msg", request.msg, limits.max_message, allow_empty=False)
        if request.cid is not None:
            _bound(request, "cid", request.cid, limits.max_token, allow_empty=False)
    elif isinstance(request, Register):
        _bound(request, "name", request.name, limits.max_name, allow_empty=False)
        _bound(request, "password", request.password, limits.max_password, allow_empty=False)
    elif isinstance(request, CreateGroup):
        _bound(request, "groupname", request.groupname, limits.max_group_name, allow_empty=False)
        _bound(request, "groupdesc", request.groupdesc, limits.max_group_desc, allow_empty=True)
    elif isinstance(request, AddFriend | AddGroup):
        return
    elif isinstance(request, Login):
        _bound(request, "password", request.password, limits.max_password, allow_empty=True)
        if request.device is not None:
            _bound(request, "device", request.device, limits.max_token, allow_empty=False)


def _bound(request: Message, field: str, value: str, limit: int, *, allow_empty: bool) -> None:
    tag = request.__struct_config__.tag
    msgid = tag if isinstance(tag, int) else None
    ref = getattr(request, "ref", None)
    if len(value) > limit:
        raise InvalidMessage(
            ErrorCode.INVALID_FIELD, f"{field} longer than {limit} characters", msgid, ref=ref
        )
    if not allow_empty and not value.strip():
        raise InvalidMessage(ErrorCode.INVALID_FIELD, f"{field} must not be empty", msgid, ref=ref)


class Outbound:
    """One server message, encoded once, rendered per kind of peer on demand.

    Args:
        json: The encoded message (``encode`` output, or a body received from
            the bus that was encoded that way on another node).
    """

    __slots__ = ("_classic", "_line", "json")

    def __init__(self, json: bytes) -> None:
        self.json = json
        self._line: bytes | None = None
        self._classic: bytes | None = None

    @classmethod
    def of(cls, message: Message) -> "Outbound":
        return cls(encode(message))

    @property
    def line(self) -> bytes:
        """The NDJSON rendering: the JSON text and a newline."""
        if self._line is None:
            self._line = ndjson_line(self.json)
        return self._line

    @property
    def classic(self) -> bytes:
        """The classic rendering: NUL-terminated frames, each under 1024 bytes, concatenated."""
        if self._classic is None:
            if len(self.json) < CLASSIC_FRAME_MAX:
                self._classic = classic_frame(self.json)
            else:
                self._classic = b"".join(classic_frame(f) for f in split_classic(self.json))
        return self._classic


def split_classic(json: bytes) -> list[bytes]:
    """Split an encoded server message into encoded messages that each fit a classic frame.

    A message that fits is returned as is. A chat push is cut into several
    pushes that carry consecutive parts of ``msg``; a login answer keeps the
    longest prefix of each list (friends, groups, offline messages) that fits,
    and the offline messages after that prefix follow, in order, as pushes of
    their own. Any other message is small by construction.

    Raises:
        ValueError: the message does not fit and cannot be split.
    """
    if len(json) + 1 <= CLASSIC_FRAME_MAX:
        return [json]
    message = _SERVER_DECODER.decode(json)
    if isinstance(message, OneChat | GroupChat):
        return [encode(part) for part in _split_chat(message)]
    if isinstance(message, LoginAck):
        return _split_login(message)
    raise ValueError(f"cannot split {type(message).__name__} for a classic peer")


def _split_chat(message: OneChat | GroupChat) -> list[OneChat | GroupChat]:
    overhead = len(encode(msgspec.structs.replace(message, msg=""))) + 1
    budget = CLASSIC_FRAME_MAX - overhead
    if budget < 16:
        raise ValueError("chat message header alone does not fit a classic frame")
    parts: list[OneChat | GroupChat] = []
    text = message.msg
    while text:
        # Take as many characters as fit once JSON-escaped.
        lo, hi = 1, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(encode(msgspec.structs.replace(message, msg=text[:mid]))) + 1 <= (
                CLASSIC_FRAME_MAX
            ):
                lo = mid
            else:
                hi = mid - 1
        parts.append(msgspec.structs.replace(message, msg=text[:lo]))
        text = text[lo:]
    return parts


def _split_login(message: LoginAck) -> list[bytes]:
    kept: dict[str, list[str]] = {"friends": [], "groups": [], "requests": [], "offlinemsg": []}
    overflow: list[str] = []
    for key in ("friends", "groups", "requests", "offlinemsg"):
        items: list[str] = getattr(message, key)
        for index, item in enumerate(items):
            trial = {**kept, key: [*kept[key], item]}
            if len(encode(msgspec.structs.replace(message, **trial))) + 1 > CLASSIC_FRAME_MAX:
                # Keep a prefix only: offline messages must stay in order, and
                # friends or groups past this point cannot reach a classic client.
                if key == "offlinemsg":
                    overflow = items[index:]
                break
            kept = trial
    frames = [encode(msgspec.structs.replace(message, **kept))]
    for item in overflow:
        frames.extend(split_classic(item.encode()))
    return frames
