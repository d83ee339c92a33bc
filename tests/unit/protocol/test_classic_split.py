"""Large server messages toward a classic client: NUL frames of at most 1023 bytes, nothing lost.

The classic client reads one ``recv`` of 1024 bytes and parses it as a C string
(PROTOCOL-CLASSIC.md), so ``Outbound.classic`` must split what does not fit.
"""

from itertools import pairwise

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from clusterchat.protocol import (
    CLASSIC_FRAME_MAX,
    Error,
    FriendEntry,
    GroupChat,
    GroupEntry,
    JsonStreamDecoder,
    LoginAck,
    MemberEntry,
    OneChat,
    Outbound,
    ServerMessage,
    decode_server_message,
    encode,
    encode_entry,
    split_classic,
)
from tests.support.defaults import LIMITS
from tests.unit.protocol.strategies import PROTOCOL, TEXT

TIME = "2026-11-25 10:00:00"
ChatPush = OneChat | GroupChat


def classic_frames(message: ServerMessage) -> list[bytes]:
    """The classic rendering of ``message``, cut back into its frames (NULs checked)."""
    rendering = Outbound.of(message).classic
    assert rendering.endswith(b"\x00")
    decoder = JsonStreamDecoder(LIMITS)
    frames = decoder.feed(rendering)
    assert decoder.buffered == 0
    assert rendering.count(b"\x00") == len(frames)
    for frame in frames:
        assert len(frame) + 1 <= CLASSIC_FRAME_MAX, "frame and NUL exceed the classic buffer"
    return frames


def header(message: ChatPush) -> ChatPush:
    """The message without its text: what every part of a split push must repeat."""
    return msgspec.structs.replace(message, msg="")


def push(kind: type[ChatPush], text: str, name: str = "张三") -> ChatPush:
    """A chat push as the server delivers it."""
    if kind is OneChat:
        return OneChat(id=13, name=name, toid=21, msg=text, time=TIME, mid="n1-000042")
    return GroupChat(id=13, name=name, groupid=7, msg=text, time=TIME, mid="n1-000042")


def check_chat_split(message: ChatPush) -> None:
    """Every frame is a push of the same kind and header; the parts give back the text."""
    frames = classic_frames(message)
    parts = [decode_server_message(frame) for frame in frames]
    assert all(type(part) is type(message) for part in parts)
    texts = [part.msg for part in parts if isinstance(part, OneChat | GroupChat)]
    assert all(header(part) == header(message) for part in parts if isinstance(part, ChatPush))
    assert "".join(texts) == message.msg
    assert all(texts), "no empty part"
    # Greedy: no part could have taken the next character of the text.
    for part, following in pairwise(texts):
        longer = msgspec.structs.replace(message, msg=part + following[0])
        assert len(encode(longer)) + 1 > CLASSIC_FRAME_MAX


@pytest.mark.parametrize("kind", [OneChat, GroupChat])
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x" * 5000, id="ascii"),
        pytest.param("中文消息，很长。" * 400, id="chinese"),  # noqa: RUF001
        pytest.param('say "hi" \\ ' * 500, id="quotes-and-backslashes"),
        pytest.param("".join(chr(c) for c in range(32)) * 120, id="control-characters"),
        pytest.param("😀a\n" * 700, id="emoji-and-newlines"),
    ],
)
def test_long_chat_push_is_split(kind: type[ChatPush], text: str) -> None:
    """A long push becomes several NUL frames of at most 1023 bytes whose msgs concatenate back."""
    message = push(kind, text)
    assert len(encode(message)) + 1 > CLASSIC_FRAME_MAX
    check_chat_split(message)
    assert len(classic_frames(message)) > 1


@PROTOCOL
@given(
    kind=st.sampled_from([OneChat, GroupChat]),
    unit=TEXT.filter(bool),
    times=st.integers(1, 600),
    name=st.text(max_size=64),
)
@example(kind=OneChat, unit="\x00", times=300, name="n")
@example(kind=GroupChat, unit='\\"', times=600, name="")
def test_any_chat_text_survives_splitting(
    kind: type[ChatPush], unit: str, times: int, name: str
) -> None:
    """For any text, long or short, the classic frames fit and carry the whole text."""
    check_chat_split(push(kind, unit * times, name=name))


def test_short_push_is_one_frame() -> None:
    """A push that fits is sent as is, with a NUL."""
    message = push(OneChat, "hello")
    assert Outbound.of(message).classic == encode(message) + b"\x00"
    assert split_classic(encode(message)) == [encode(message)]


def test_header_too_large_to_split() -> None:
    """A push whose header alone fills a frame cannot be split and says so."""
    message = push(OneChat, "x" * 2000, name="n" * 1010)
    with pytest.raises(ValueError, match="header"):
        split_classic(encode(message))


def test_other_oversized_message_is_refused() -> None:
    """A message that has no way to be split raises instead of sending a frame that crashes."""
    with pytest.raises(ValueError, match="cannot split Error"):
        _ = Outbound.of(Error(errno=50, errmsg="x" * 2000)).classic


# --- Login answers -----------------------------------------------------------------------


def friend(index: int, name: str) -> str:
    """A friend entry as JSON text."""
    state = "online" if index % 2 else "offline"
    return encode_entry(FriendEntry(id=100 + index, name=name, state=state))


def group(index: int, members: int) -> str:
    """A group entry as JSON text, with member entries as JSON text inside."""
    users = [
        encode_entry(MemberEntry(id=j, name=f"用户{j}", role="normal", state="online"))
        for j in range(members)
    ]
    return encode_entry(
        GroupEntry(id=index, groupname=f"group {index}", groupdesc="desc", users=users)
    )


def offline(index: int, length: int) -> str:
    """A stored offline chat message as JSON text; long ones need splitting themselves."""
    kind: type[ChatPush] = OneChat if index % 3 else GroupChat
    text = f"#{index}:" + "离" * length
    return encode(push(kind, text)).decode()


def check_login_split(ack: LoginAck) -> None:
    """First frame: a LoginAck keeping the longest prefix of each list that fits; then the
    offline messages that did not fit, in order, each as its own push frame(s), none lost."""
    frames = classic_frames(ack)
    first = decode_server_message(frames[0])
    assert isinstance(first, LoginAck)
    assert (first.errno, first.id, first.name) == (ack.errno, ack.id, ack.name)
    for key in ("friends", "groups", "offlinemsg"):
        kept: list[str] = getattr(first, key)
        original: list[str] = getattr(ack, key)
        assert kept == original[: len(kept)], f"{key} is not a prefix"
        if len(kept) < len(original):  # the next entry really did not fit
            bigger = msgspec.structs.replace(first, **{key: [*kept, original[len(kept)]]})
            assert len(encode(bigger)) + 1 > CLASSIC_FRAME_MAX
    # The rest of the stream is the remaining offline messages, in order.
    pushes = [decode_server_message(frame) for frame in frames[1:]]
    for item in ack.offlinemsg[len(first.offlinemsg) :]:
        original_push = decode_server_message(item.encode())
        assert isinstance(original_push, OneChat | GroupChat)
        text = ""
        while text != original_push.msg:
            assert pushes, "an offline message was lost"
            part = pushes.pop(0)
            assert isinstance(part, type(original_push))
            assert header(part) == header(original_push)
            text += part.msg
            assert original_push.msg.startswith(text)
    assert pushes == [], "unexpected frames after the offline messages"


def test_large_login_answer() -> None:
    """Many friends, groups and offline messages: a LoginAck first, the rest pushed in order."""
    ack = LoginAck(
        errno=0,
        id=13,
        name="张三",
        friends=[friend(i, f"朋友 {i}") for i in range(30)],
        groups=[group(i, members=3) for i in range(6)],
        offlinemsg=[offline(i, length=(i * 97) % 700) for i in range(25)],
    )
    check_login_split(ack)
    assert len(classic_frames(ack)) > 20


def test_offline_messages_keep_their_order() -> None:
    """A short offline message after one that did not fit is not moved ahead of it."""
    small = offline(2, length=5)
    ack = LoginAck(errno=0, id=13, name="a", offlinemsg=[offline(0, 200), offline(1, 200), small])
    check_login_split(ack)
    first = decode_server_message(classic_frames(ack)[0])
    assert isinstance(first, LoginAck)
    assert small not in first.offlinemsg


def test_login_answer_that_fits_is_untouched() -> None:
    """A login answer under 1023 bytes is one frame, identical to its encoding."""
    ack = LoginAck(errno=0, id=13, name="a", friends=[friend(1, "b")], offlinemsg=[offline(1, 3)])
    assert classic_frames(ack) == [encode(ack)]


@PROTOCOL
@given(
    friend_names=st.lists(st.text(max_size=30), max_size=40),
    group_sizes=st.lists(st.integers(0, 6), max_size=8),
    offline_lengths=st.lists(st.integers(0, 900), max_size=12),
)
def test_any_login_answer_splits_without_loss(
    friend_names: list[str], group_sizes: list[int], offline_lengths: list[int]
) -> None:
    """Whatever the list sizes, the first frame fits and no offline message is lost or reordered."""
    ack = LoginAck(
        errno=0,
        id=13,
        name="张三",
        friends=[friend(i, name) for i, name in enumerate(friend_names)],
        groups=[group(i, size) for i, size in enumerate(group_sizes)],
        offlinemsg=[offline(i, length) for i, length in enumerate(offline_lengths)],
    )
    check_login_split(ack)
