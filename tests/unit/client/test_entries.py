"""Decoding the JSON-text lists of a login answer: friends, groups with members, offline mail."""

import pytest

from clusterchat.client import friends, groups, offline_messages
from clusterchat.protocol import (
    FriendEntry,
    GroupChat,
    GroupEntry,
    InvalidMessage,
    LoginAck,
    MemberEntry,
    OneChat,
    encode,
    encode_entry,
)


def test_friends_are_decoded_from_json_texts() -> None:
    """Each friend string becomes a FriendEntry, in order."""
    entries = [
        FriendEntry(id=2, name="bob", state="online"),
        FriendEntry(id=3, name="é", state="offline"),
    ]
    ack = LoginAck(errno=0, id=1, name="a", friends=[encode_entry(e) for e in entries])
    assert friends(ack) == entries


def test_groups_are_decoded_with_their_members() -> None:
    """Each group string becomes a GroupEntry paired with its decoded members."""
    members = [
        MemberEntry(id=1, name="a", role="creator", state="online"),
        MemberEntry(id=2, name="b", role="normal", state="offline"),
    ]
    group = GroupEntry(id=5, groupname="g", groupdesc="d", users=[encode_entry(m) for m in members])
    ack = LoginAck(errno=0, id=1, name="a", groups=[encode_entry(group)])
    assert groups(ack) == [(group, members)]


def test_offline_messages_keep_their_kind_and_order() -> None:
    """Stored one-to-one and group messages decode to OneChat and GroupChat, oldest first."""
    stored = [
        OneChat(id=2, name="b", toid=1, msg="first", time="2024-01-01 10:00:00", mid="m1"),
        GroupChat(id=3, name="c", groupid=5, msg="second", time="2024-01-01 10:00:01", mid="m2"),
    ]
    ack = LoginAck(errno=0, id=1, name="a", offlinemsg=[encode(m).decode() for m in stored])
    assert offline_messages(ack) == stored


def test_empty_lists_decode_to_empty_lists() -> None:
    """A login answer without lists yields no friends, groups or messages."""
    ack = LoginAck(errno=0, id=1, name="a")
    assert (friends(ack), groups(ack), offline_messages(ack)) == ([], [], [])


@pytest.mark.parametrize(
    ("ack", "decode"),
    [
        (LoginAck(errno=0, friends=['{"id":2}']), friends),
        (
            LoginAck(errno=0, groups=['{"id":5,"groupname":"g","groupdesc":"","users":["x"]}']),
            groups,
        ),
        (LoginAck(errno=0, offlinemsg=['{"msgid":2,"errno":0}']), offline_messages),
    ],
    ids=["friend", "member", "offline"],
)
def test_malformed_entries_raise_invalid_message(ack: LoginAck, decode: object) -> None:
    """An entry that is not the expected JSON text raises InvalidMessage."""
    assert callable(decode)
    with pytest.raises(InvalidMessage):
        decode(ack)
