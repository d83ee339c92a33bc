"""Hypothesis strategies and the settings profile shared by the protocol tests.

The profile keeps example counts modest (the whole protocol suite must run in
well under 30 s on two slow cores) and turns the per-example deadline off, since
a slow CI machine would otherwise fail on timing noise. Set
``CLUSTERCHAT_HYPOTHESIS_EXAMPLES`` to run more examples locally.
"""

import os
from itertools import pairwise
from typing import TypeAlias

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from clusterchat.protocol import (
    MAX_ID,
    AddFriendAck,
    AddGroupAck,
    CreateGroupAck,
    Error,
    FriendRequest,
    GroupChat,
    GroupChatAck,
    GroupInvite,
    InviteAck,
    LoginAck,
    LogoutAck,
    OneChat,
    OneChatAck,
    Pong,
    RegAck,
    ServerMessage,
)

__all__ = [
    "PROTOCOL",
    "SERVER_MESSAGE_STRATEGIES",
    "TEXT",
    "Json",
    "chunked",
    "json_objects",
    "json_values",
    "jsonish_bytes",
    "nesting",
    "separators",
    "server_messages",
    "stream_bytes",
]

settings.register_profile(
    "clusterchat-protocol",
    deadline=None,
    max_examples=int(os.environ.get("CLUSTERCHAT_HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow],
)
#: Decorate every property test with ``@PROTOCOL`` (or ``@settings(PROTOCOL, ...)``).
PROTOCOL = settings.get_profile("clusterchat-protocol")

Json: TypeAlias = dict[str, "Json"] | list["Json"] | str | int | bool | None

#: Text rich in what matters to a frame scanner: brackets, quotes, backslashes, NUL,
#: control characters (escaped by encoders) and Chinese (raw UTF-8).
TEXT = st.text(st.sampled_from('{}[]"\\ \x00\n:,中文') | st.characters(codec="utf-8"))
_SCALARS: st.SearchStrategy[Json] = st.none() | st.booleans() | st.integers() | TEXT


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Json]:
    """Any JSON value without floats (their text form does not round-trip exactly)."""
    return st.recursive(
        _SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
        max_leaves=max_leaves,
    )


def json_objects(max_depth: int) -> st.SearchStrategy[dict[str, Json]]:
    """JSON objects nested at most ``max_depth`` levels (the object itself is level 1)."""
    return st.dictionaries(TEXT, json_values(max_leaves=8), max_size=4).filter(
        lambda value: nesting(value) <= max_depth
    )


def nesting(value: Json) -> int:
    """How many levels of objects and arrays ``value`` has (0 for a scalar)."""
    if isinstance(value, dict):
        return 1 + max((nesting(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((nesting(item) for item in value), default=0)
    return 0


def separators() -> st.SearchStrategy[bytes]:
    """What may stand between two frames: nothing, NULs, newlines, spaces, tabs, CRs."""
    return st.lists(st.sampled_from([b"\x00", b"\n", b" ", b"\t", b"\r\n"]), max_size=3).map(
        b"".join
    )


_STREAM_PIECES = [
    *(bytes([byte]) for byte in b'{}[]"\\\x00 \n\x0ba1:,'),
    *(b'\\"', b"{}", b'"x"', b'"}"', b"\\\n", "中".encode()),
]


def stream_bytes(max_pieces: int = 40) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, biased toward the ones that drive the frame scanner."""
    piece = st.sampled_from(_STREAM_PIECES) | st.binary(max_size=3)
    return st.lists(piece, max_size=max_pieces).map(b"".join)


def jsonish_bytes() -> st.SearchStrategy[bytes]:
    """Encoded JSON values (objects, arrays, strings, scalars) mixed with separators and junk."""
    value = json_values(max_leaves=6).map(msgspec.json.encode)
    piece = value | separators() | stream_bytes(max_pieces=3)
    return st.lists(piece, max_size=8).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points, empty chunks included."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


_NAMES = st.text(max_size=20)
_IDS = st.integers(1, MAX_ID)
_OPT_IDS = st.none() | _IDS
_OPT_REFS = st.none() | st.integers(-(2**63), 2**63 - 1)
_OPT_TEXT = st.none() | st.text(max_size=30)
_ENTRIES = st.lists(st.text(max_size=40), max_size=4)


_ANSWER: dict[str, st.SearchStrategy[object]] = {"errno": st.integers(0, 60), "errmsg": _OPT_TEXT}
_CHAT: dict[str, st.SearchStrategy[object]] = {
    "msg": TEXT,
    "id": _OPT_IDS,
    "name": _OPT_TEXT,
    "time": _OPT_TEXT,
    "mid": _OPT_TEXT,
    "ref": _OPT_REFS,
}

#: One strategy per server message type, optional fields set or left out at random.
SERVER_MESSAGE_STRATEGIES: dict[type[ServerMessage], st.SearchStrategy[ServerMessage]] = {
    LoginAck: st.builds(
        LoginAck,
        **_ANSWER,
        id=_OPT_IDS,
        name=_OPT_TEXT,
        offlinemsg=_ENTRIES,
        friends=_ENTRIES,
        groups=_ENTRIES,
        requests=_ENTRIES,
    ),
    RegAck: st.builds(RegAck, **_ANSWER, id=_OPT_IDS),
    OneChat: st.builds(OneChat, toid=_IDS, **_CHAT),
    GroupChat: st.builds(GroupChat, groupid=_IDS, **_CHAT),
    LogoutAck: st.builds(LogoutAck, **_ANSWER),
    OneChatAck: st.builds(OneChatAck, **_ANSWER, mid=_OPT_TEXT, ref=_OPT_REFS),
    AddFriendAck: st.builds(
        AddFriendAck, **_ANSWER, friendid=_OPT_IDS, pending=st.none() | st.just(True)
    ),
    CreateGroupAck: st.builds(CreateGroupAck, **_ANSWER, groupid=_OPT_IDS, groupname=_OPT_TEXT),
    AddGroupAck: st.builds(AddGroupAck, **_ANSWER, groupid=_OPT_IDS),
    GroupChatAck: st.builds(GroupChatAck, **_ANSWER, mid=_OPT_TEXT, ref=_OPT_REFS),
    Error: st.builds(Error, **_ANSWER, req=st.none() | st.integers(0, 200)),
    Pong: st.builds(Pong, ref=_OPT_REFS),
    FriendRequest: st.builds(FriendRequest, id=_IDS, name=_NAMES),
    InviteAck: st.builds(InviteAck, **_ANSWER, groupid=_OPT_IDS, userid=_OPT_IDS),
    GroupInvite: st.builds(GroupInvite, groupid=_IDS, groupname=_NAMES, id=_IDS, name=_NAMES),
}


def server_messages() -> st.SearchStrategy[ServerMessage]:
    """Random instances of every server message type."""
    return st.one_of(list(SERVER_MESSAGE_STRATEGIES.values()))
