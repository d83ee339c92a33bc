"""The codec against the classic wire contract (PROTOCOL-CLASSIC.md, docs/protocol.md §2-5)."""

import json
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterchat.protocol import (
    CLASSIC_FRAME_MAX,
    MAX_ID,
    Ack,
    AddFriend,
    AddGroup,
    CreateGroup,
    ErrorCode,
    FriendEntry,
    GroupChat,
    GroupEntry,
    InvalidMessage,
    Invite,
    JsonStreamDecoder,
    Limits,
    Login,
    LoginAck,
    Logout,
    MemberEntry,
    Message,
    OneChat,
    Outbound,
    Ping,
    RegAck,
    Register,
    ServerMessage,
    decode_request,
    decode_server_message,
    encode,
    encode_entry,
)
from clusterchat.protocol.messages import REQUEST_TYPES, SERVER_MESSAGE_TYPES
from tests.support.defaults import LIMITS, limits_with
from tests.unit.protocol.strategies import (
    PROTOCOL,
    SERVER_MESSAGE_STRATEGIES,
    TEXT,
    chunked,
    server_messages,
)

TIME = "2026-11-25 10:00:00"

# --- Requests as the classic client sends them -------------------------------------------

CLASSIC_REQUESTS: list[tuple[bytes, Message]] = [
    (b'{"msgid":1,"id":13,"password":"123456"}', Login(id=13, password="123456")),
    (b'{"msgid":3,"id":13}', Logout(id=13)),
    (
        b'{"msgid":4,"name":"zhang san","password":"123456"}',
        Register(name="zhang san", password="123456"),
    ),
    (
        b'{"msgid":6,"id":13,"name":"zhang san","toid":21,"msg":"hello",'
        b'"time":"2026-11-25 10:00:00"}',
        OneChat(id=13, name="zhang san", toid=21, msg="hello", time=TIME),
    ),
    (b'{"msgid":7,"id":13,"friendid":21}', AddFriend(id=13, friendid=21)),
    (
        b'{"msgid":8,"id":13,"groupname":"c++ club","groupdesc":"we talk"}',
        CreateGroup(id=13, groupname="c++ club", groupdesc="we talk"),
    ),
    (b'{"msgid":9,"id":13,"groupid":1}', AddGroup(id=13, groupid=1)),
    (
        b'{"msgid":10,"id":13,"name":"zhang san","groupid":1,"msg":"hi all",'
        b'"time":"2026-11-25 10:00:00"}',
        GroupChat(id=13, name="zhang san", groupid=1, msg="hi all", time=TIME),
    ),
    (b'{"msgid":120,"ref":5}', Ping(ref=5)),
    (b'{"cursor":7,"msgid":130}', Ack(cursor=7)),
    (b'{"groupid":3,"msgid":150,"userid":4}', Invite(groupid=3, userid=4)),
]

REQUEST_IDS = [type(message).__name__ for _, message in CLASSIC_REQUESTS]


def test_every_request_type_has_a_classic_example() -> None:
    """The examples below cover every request type the server accepts."""
    assert {type(message) for _, message in CLASSIC_REQUESTS} == set(REQUEST_TYPES)


@pytest.mark.parametrize(("frame", "expected"), CLASSIC_REQUESTS, ids=REQUEST_IDS)
def test_classic_request_decodes(frame: bytes, expected: Message) -> None:
    """Each request decodes from the exact JSON the classic client sends."""
    assert decode_request(frame, LIMITS) == expected


@pytest.mark.parametrize(("frame", "expected"), CLASSIC_REQUESTS, ids=REQUEST_IDS)
def test_classic_request_in_sorted_key_order(frame: bytes, expected: Message) -> None:
    """Key order does not matter (the classic client's json library sorts keys)."""
    resorted = json.dumps(json.loads(frame), sort_keys=True, separators=(",", ":")).encode()
    assert decode_request(resorted, LIMITS) == expected


@pytest.mark.parametrize(("frame", "expected"), CLASSIC_REQUESTS, ids=REQUEST_IDS)
def test_unknown_extra_fields_are_tolerated(frame: bytes, expected: Message) -> None:
    """Fields clusterchat does not know (forks add some) are ignored."""
    extended = frame[:-1] + b',"zz_extra":{"a":[1,"x"]},"client":"fork 2.0","aa":null}'
    assert decode_request(extended, LIMITS) == expected


def test_chinese_request_decodes() -> None:
    """Raw UTF-8 Chinese text in a request decodes to the same text."""
    frame = '{"msgid":6,"id":13,"name":"张三","toid":21,"msg":"你好，世界","time":"t"}'.encode()  # noqa: RUF001
    request = decode_request(frame, LIMITS)
    assert isinstance(request, OneChat)
    assert (request.name, request.msg) == ("张三", "你好，世界")  # noqa: RUF001


def test_chat_request_needs_only_recipient_and_text() -> None:
    """The sender fields the server does not trust may be left out."""
    request = decode_request(b'{"msgid":6,"toid":21,"msg":"hello"}', LIMITS)
    assert request == OneChat(toid=21, msg="hello")


# --- Errors ------------------------------------------------------------------------------


def decode_error(frame: bytes, limits: Limits = LIMITS) -> InvalidMessage:
    """The InvalidMessage that ``decode_request`` raises for ``frame``."""
    with pytest.raises(InvalidMessage) as caught:
        decode_request(frame, limits)
    assert not caught.value.closes_connection
    return caught.value


@pytest.mark.parametrize(
    "frame", [b'{"msgid":6,', b"{'msgid':6}", b"", b"\xff\xfe", b'{"msgid":6}}', b"nul"]
)
def test_malformed_json(frame: bytes) -> None:
    """Text that is not JSON is error 10, with no request msgid."""
    error = decode_error(frame)
    assert (error.code, error.request_msgid) == (ErrorCode.MALFORMED_JSON, None)


@pytest.mark.parametrize("frame", [b"[1,2]", b'"msgid"', b"12", b"null", b"true", b"[]"])
def test_not_an_object(frame: bytes) -> None:
    """Valid JSON that is not an object is error 11."""
    error = decode_error(frame)
    assert (error.code, error.request_msgid) == (ErrorCode.NOT_AN_OBJECT, None)


@pytest.mark.parametrize("msgid", [0, 11, 99, 2, 5, 100, 121, -1])
def test_unknown_msgid(msgid: int) -> None:
    """A msgid no request has (server-only ones included) is error 12 naming that msgid."""
    error = decode_error(b'{"msgid":%d,"id":1}' % msgid)
    assert (error.code, error.request_msgid) == (ErrorCode.UNKNOWN_MSGID, msgid)


@pytest.mark.parametrize("frame", [b"{}", b'{"msgid":"6"}', b'{"msgid":true}', b'{"msgid":6.5}'])
def test_missing_or_mistyped_msgid(frame: bytes) -> None:
    """An object without an integer msgid is error 13 with no request msgid."""
    error = decode_error(frame)
    assert (error.code, error.request_msgid) == (ErrorCode.INVALID_FIELD, None)


@pytest.mark.parametrize(
    ("frame", "msgid"),
    [
        (b'{"msgid":6,"toid":"21","msg":"x"}', 6),
        (b'{"msgid":6,"msg":"x"}', 6),
        (b'{"msgid":6,"toid":21}', 6),
        (b'{"msgid":6,"toid":21,"msg":5}', 6),
        (b'{"msgid":1,"id":13}', 1),
        (b'{"msgid":1,"id":"13","password":"x"}', 1),
        (b'{"msgid":4,"name":null,"password":"x"}', 4),
        (b'{"msgid":7,"friendid":[21]}', 7),
        (b'{"msgid":8,"groupdesc":"d"}', 8),
        (b'{"msgid":9,"groupid":1.5}', 9),
        (b'{"msgid":10,"groupid":1,"msg":{"text":"x"}}', 10),
        (b'{"msgid":120,"ref":"r"}', 120),
    ],
)
def test_wrong_type_or_missing_field(frame: bytes, msgid: int) -> None:
    """A known request with a missing or mistyped field is error 13 naming its msgid."""
    error = decode_error(frame)
    assert (error.code, error.request_msgid) == (ErrorCode.INVALID_FIELD, msgid)


def register(name: str = "zhang san", password: str = "secret") -> bytes:
    """A classic registration request."""
    return msgspec.json.encode({"msgid": 4, "name": name, "password": password})


def chat(msgid: int, text: str) -> bytes:
    """A classic one-to-one (6) or group (10) chat request."""
    target = "toid" if msgid == 6 else "groupid"
    return msgspec.json.encode({"msgid": msgid, target: 21, "msg": text, "time": TIME})


def create_group(name: str = "club", desc: str = "") -> bytes:
    """A classic create-group request."""
    return msgspec.json.encode({"msgid": 8, "groupname": name, "groupdesc": desc})


def login(password: str) -> bytes:
    """A classic login request."""
    return msgspec.json.encode({"msgid": 1, "id": 13, "password": password})


L = LIMITS
LENGTH_LIMITS = [
    pytest.param(lambda n: register(name="中" * n), L.max_name, 4, id="register-name"),
    pytest.param(lambda n: register(password="p" * n), L.max_password, 4, id="register-password"),
    pytest.param(lambda n: login("p" * n), L.max_password, 1, id="login-password"),
    pytest.param(lambda n: chat(6, "中" * n), L.max_message, 6, id="one-chat-msg"),
    pytest.param(lambda n: chat(10, "x" * n), L.max_message, 10, id="group-chat-msg"),
    pytest.param(lambda n: create_group(name="组" * n), L.max_group_name, 8, id="groupname"),
    pytest.param(lambda n: create_group(desc="d" * n), L.max_group_desc, 8, id="groupdesc"),
]


@pytest.mark.parametrize(("build", "limit", "msgid"), LENGTH_LIMITS)
def test_field_at_its_length_limit_is_accepted(
    build: Callable[[int], bytes], limit: int, msgid: int
) -> None:
    """A field exactly as long as its limit (counted in characters, not bytes) is accepted."""
    assert decode_request(build(limit), LIMITS).__struct_config__.tag == msgid


@pytest.mark.parametrize(("build", "limit", "msgid"), LENGTH_LIMITS)
def test_field_over_its_length_limit(build: Callable[[int], bytes], limit: int, msgid: int) -> None:
    """A field one character over its limit is error 13 naming the request."""
    error = decode_error(build(limit + 1))
    assert (error.code, error.request_msgid) == (ErrorCode.INVALID_FIELD, msgid)


def test_custom_limits_apply() -> None:
    """The limits passed in are the ones enforced."""
    tight = limits_with(max_message=5, max_name=3)
    assert decode_request(chat(6, "12345"), tight) == OneChat(toid=21, msg="12345", time=TIME)
    assert decode_error(chat(6, "123456"), tight).code is ErrorCode.INVALID_FIELD
    assert decode_error(register(name="abcd"), tight).code is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    ("frame", "msgid"),
    [
        (chat(6, ""), 6),
        (chat(6, "  \n\t "), 6),
        (chat(10, ""), 10),
        (register(name=""), 4),
        (register(name="   "), 4),
        (register(password=""), 4),
        (create_group(name=""), 8),
    ],
)
def test_empty_required_text(frame: bytes, msgid: int) -> None:
    """An empty or blank message, name, password or group name is error 13."""
    error = decode_error(frame)
    assert (error.code, error.request_msgid) == (ErrorCode.INVALID_FIELD, msgid)


def test_empty_optional_text_is_accepted() -> None:
    """An empty group description and an empty login password are valid requests."""
    assert decode_request(create_group(desc=""), LIMITS) == CreateGroup(groupname="club")
    assert decode_request(login(""), LIMITS) == Login(id=13, password="")


# --- Encoding: the classic server's exact bytes ------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            OneChat(id=13, name="zhang san", toid=21, msg="hello", time=TIME),
            b'{"id":13,"msg":"hello","msgid":6,"name":"zhang san",'
            b'"time":"2026-11-25 10:00:00","toid":21}',
            id="one-chat-push",
        ),
        pytest.param(
            GroupChat(id=13, name="zhang san", groupid=1, msg="hi", time=TIME),
            b'{"groupid":1,"id":13,"msg":"hi","msgid":10,"name":"zhang san",'
            b'"time":"2026-11-25 10:00:00"}',
            id="group-chat-push",
        ),
        pytest.param(
            LoginAck(errno=1, errmsg="id or password is invalid!"),
            b'{"errmsg":"id or password is invalid!","errno":1,"msgid":2}',
            id="login-refused",
        ),
        pytest.param(
            LoginAck(errno=2, errmsg="this account is using, input another!"),
            b'{"errmsg":"this account is using, input another!","errno":2,"msgid":2}',
            id="login-already-in",
        ),
        pytest.param(
            LoginAck(errno=0, id=13, name="zhang san"),
            b'{"errno":0,"id":13,"msgid":2,"name":"zhang san"}',
            id="login-ok-empty-lists-omitted",
        ),
        pytest.param(RegAck(errno=0, id=22), b'{"errno":0,"id":22,"msgid":5}', id="reg-ok"),
        pytest.param(RegAck(errno=1), b'{"errno":1,"msgid":5}', id="reg-refused"),
    ],
)
def test_encode_classic_bytes(message: Message, expected: bytes) -> None:
    """Compact, keys sorted with msgid in its sorted place, errno even when 0."""
    assert encode(message) == expected


def test_login_ack_lists_hold_json_strings() -> None:
    """friends, groups and their users are arrays of JSON *strings*, as the classic client needs."""
    member = encode_entry(MemberEntry(id=13, name="zhang san", role="creator", state="online"))
    group = encode_entry(GroupEntry(id=1, groupname="club", groupdesc="d", users=[member]))
    friend = encode_entry(FriendEntry(id=21, name="li si", state="offline"))
    offline = encode(OneChat(id=21, name="li si", toid=13, msg="hi", time=TIME)).decode()
    ack = LoginAck(
        errno=0, id=13, name="zhang san", friends=[friend], groups=[group], offlinemsg=[offline]
    )
    assert friend == '{"id":21,"name":"li si","state":"offline"}'
    assert member == '{"id":13,"name":"zhang san","role":"creator","state":"online"}'
    assert group == (
        '{"groupdesc":"d","groupname":"club","id":1,"users":['
        '"{\\"id\\":13,\\"name\\":\\"zhang san\\",'
        '\\"role\\":\\"creator\\",\\"state\\":\\"online\\"}"]}'
    )
    assert encode(ack) == (
        b'{"errno":0,"friends":["{\\"id\\":21,\\"name\\":\\"li si\\",\\"state\\":\\"offline\\"}"],'
        b'"groups":[' + json.dumps(group).encode() + b"],"
        b'"id":13,"msgid":2,"name":"zhang san",'
        b'"offlinemsg":[' + json.dumps(offline).encode() + b"]}"
    )
    # What the classic client does: parse the answer, then each element as JSON text.
    parsed = json.loads(encode(ack))
    assert all(isinstance(item, str) for key in ("friends", "groups") for item in parsed[key])
    [group_seen] = [json.loads(item) for item in parsed["groups"]]
    assert [json.loads(user)["role"] for user in group_seen["users"]] == ["creator"]
    assert json.loads(parsed["offlinemsg"][0])["msgid"] == 6


def test_chinese_encodes_as_raw_utf8_and_round_trips() -> None:
    """Non-ASCII text is written as raw UTF-8, never as \\u escapes, and decodes back."""
    push = OneChat(id=13, name="张三", toid=21, msg="你好，世界 😀", time=TIME)  # noqa: RUF001
    data = encode(push)
    assert "你好，世界 😀".encode() in data  # noqa: RUF001
    assert b"\\u" not in data
    assert decode_server_message(data) == push


@PROTOCOL
@given(message=server_messages())
def test_encode_matches_the_classic_json_dump(message: ServerMessage) -> None:
    """encode equals Python's json.dumps(sort_keys, compact, ensure_ascii=False) of the message."""
    builtins = msgspec.to_builtins(message)
    expected = json.dumps(builtins, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert encode(message) == expected.encode()


# --- Server messages: round trips --------------------------------------------------------


def test_strategies_cover_every_server_message_type() -> None:
    """The round-trip strategies build every server message type there is."""
    assert set(SERVER_MESSAGE_STRATEGIES) == set(SERVER_MESSAGE_TYPES)


@PROTOCOL
@given(message=server_messages())
def test_server_message_round_trip(message: ServerMessage) -> None:
    """decode_server_message(encode(m)) == m for every server message type."""
    assert decode_server_message(encode(message)) == message


@PROTOCOL
@given(
    messages=st.lists(server_messages(), max_size=6),
    data=st.data(),
)
def test_connection_pair_round_trip(messages: list[ServerMessage], data: st.DataObject) -> None:
    """Encode, NDJSON-frame, chunk arbitrarily, decode: the same messages, in order (h11's pair)."""
    stream = b"".join(Outbound.of(message).line for message in messages)
    decoder = JsonStreamDecoder(LIMITS)
    received = [
        decode_server_message(frame)
        for chunk in data.draw(chunked(stream), label="chunks")
        for frame in decoder.feed(chunk)
    ]
    assert received == messages
    assert decoder.buffered == 0
    assert not decoder.nul_terminated


def fits_classic(message: ServerMessage) -> bool:
    """Whether the message fits one classic frame unsplit."""
    return len(encode(message)) + 1 <= CLASSIC_FRAME_MAX


@PROTOCOL
@given(
    messages=st.lists(server_messages().filter(fits_classic), max_size=4),
    data=st.data(),
)
def test_classic_rendering_round_trip(messages: list[ServerMessage], data: st.DataObject) -> None:
    """Classic NUL frames, chunked arbitrarily, decode back into the same messages."""
    stream = b"".join(Outbound.of(message).classic for message in messages)
    assert stream.count(b"\x00") == len(messages)
    decoder = JsonStreamDecoder(LIMITS)
    received = [
        decode_server_message(frame)
        for chunk in data.draw(chunked(stream), label="chunks")
        for frame in decoder.feed(chunk)
    ]
    assert received == messages
    assert decoder.nul_terminated == bool(messages)


@PROTOCOL
@given(
    toid=st.integers(1, MAX_ID),
    text=TEXT.filter(lambda t: t.strip() != "" and len(t) <= LIMITS.max_message),
    ref=st.none() | st.integers(0, 2**31),
)
def test_chat_request_round_trip(toid: int, text: str, ref: int | None) -> None:
    """A chat request written by the client library decodes to the same request."""
    request = OneChat(toid=toid, msg=text, ref=ref)
    assert decode_request(encode(request), LIMITS) == request


def test_server_decoder_rejects_requests() -> None:
    """A client-only msgid reaching the client is error 12 naming it."""
    with pytest.raises(InvalidMessage) as caught:
        decode_server_message(b'{"msgid":1,"id":13,"password":"x"}')
    assert (caught.value.code, caught.value.request_msgid) == (ErrorCode.UNKNOWN_MSGID, 1)


def test_server_decoder_errors_are_classified() -> None:
    """The client side classifies bad frames like the server side does."""
    codes = []
    for frame in (b"{", b"[]", b'{"msgid":5}', b'{"msgid":5,"errno":"0"}'):
        with pytest.raises(InvalidMessage) as caught:
            decode_server_message(frame)
        codes.append(caught.value.code)
    assert codes == [
        ErrorCode.MALFORMED_JSON,
        ErrorCode.NOT_AN_OBJECT,
        ErrorCode.INVALID_FIELD,
        ErrorCode.INVALID_FIELD,
    ]


def test_outbound_renders_each_form_once() -> None:
    """Outbound keeps the encoded JSON and renders NDJSON and classic forms from it, cached."""
    push = OneChat(id=13, name="zhang san", toid=21, msg="hello", time=TIME)
    out = Outbound.of(push)
    assert out.json == encode(push)
    assert out.line == out.json + b"\n"
    assert out.classic == out.json + b"\x00"
    assert out.line is out.line
    assert out.classic is out.classic


@pytest.mark.parametrize(
    ("request_json", "field"),
    [
        (b'{"msgid":1,"id":%d,"password":"p"}', "id"),
        (b'{"msgid":1,"id":1,"password":"p","after":%d}', "after"),
        (b'{"msgid":3,"id":%d}', "id"),
        (b'{"msgid":6,"toid":%d,"msg":"m"}', "toid"),
        (b'{"msgid":6,"toid":1,"msg":"m","ref":%d}', "ref"),
        (b'{"msgid":7,"friendid":%d}', "friendid"),
        (b'{"msgid":8,"groupname":"g","id":%d}', "id"),
        (b'{"msgid":9,"groupid":%d}', "groupid"),
        (b'{"msgid":10,"groupid":%d,"msg":"m"}', "groupid"),
        (b'{"msgid":120,"ref":%d}', "ref"),
        (b'{"msgid":130,"cursor":%d}', "cursor"),
    ],
)
@pytest.mark.parametrize("value", [2**64, -(2**64), 2**63, 2**70])
def test_numbers_out_of_the_stores_range_are_invalid_fields(
    request_json: bytes, field: str, value: int
) -> None:
    """Every number is range-checked while decoding, before any I/O (errno 13)."""
    frame = request_json % value
    with pytest.raises(InvalidMessage) as info:
        decode_request(frame, LIMITS)
    assert info.value.code == ErrorCode.INVALID_FIELD
    assert f"$.{field}" in info.value.message
    assert info.value.request_msgid == json.loads(frame)["msgid"]


@pytest.mark.parametrize("value", [0, -1, MAX_ID + 1])
def test_ids_are_positive_32_bit(value: int) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_request(b'{"msgid":7,"friendid":%d}' % value, LIMITS)
    assert info.value.code == ErrorCode.INVALID_FIELD
    assert decode_request(b'{"msgid":7,"friendid":%d}' % MAX_ID, LIMITS) == AddFriend(
        friendid=MAX_ID
    )
