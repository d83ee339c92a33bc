"""ChatService request rules: login first, the sender is the session, one-to-one chat."""

import re
import time
from collections.abc import Callable

import pytest

from clusterchat.protocol import (
    AddFriend,
    AddFriendAck,
    AddGroup,
    AddGroupAck,
    Answer,
    CreateGroup,
    CreateGroupAck,
    ErrorCode,
    GroupChat,
    GroupChatAck,
    Logout,
    LogoutAck,
    OneChat,
    OneChatAck,
    Ping,
    Pong,
    RegAck,
    Register,
    Request,
)
from tests.support.service import PASSWORD, ChatCluster

#: A request of each type that needs a login, and the answer type that reports on it.
NEEDS_LOGIN: list[tuple[Request, type[Answer]]] = [
    (Logout(id=1), LogoutAck),
    (OneChat(toid=1, msg="hi"), OneChatAck),
    (AddFriend(friendid=1), AddFriendAck),
    (CreateGroup(groupname="g"), CreateGroupAck),
    (AddGroup(groupid=1), AddGroupAck),
    (GroupChat(groupid=1, msg="hi"), GroupChatAck),
]

_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


@pytest.mark.parametrize(
    ("request_", "answer"), NEEDS_LOGIN, ids=[type(r).__name__ for r, _ in NEEDS_LOGIN]
)
async def test_requests_before_login_are_refused(
    chat_cluster: ChatCluster, request_: Request, answer: type[Answer]
) -> None:
    """Before login every request but login/register/ping gets its answer type with errno 20."""
    node = await chat_cluster.node()
    await node.register("alice")
    client = node.connect()
    await client.send(request_)
    [reply] = client.session.received
    assert isinstance(reply, answer)
    assert reply.errno == 20
    assert node.store.calls["create_group"] == node.store.calls["add_friendship"] == 0


async def test_ping_and_register_need_no_login(chat_cluster: ChatCluster) -> None:
    """Ping is answered with a Pong carrying its ref, and register works, before login."""
    node = await chat_cluster.node()
    client = node.connect()
    await client.send(Ping(ref=7))
    await client.send(Register(name="alice", password=PASSWORD))
    pong, reg = client.session.received
    assert pong == Pong(ref=7)
    assert isinstance(reg, RegAck)
    assert reg.errno == 0


@pytest.mark.parametrize(
    ("make", "answer"),
    [
        (lambda other, user, _: OneChat(id=other, toid=user, msg="spoof"), OneChatAck),
        (lambda other, user, _: AddFriend(id=other, friendid=user), AddFriendAck),
        (lambda other, _, __: CreateGroup(id=other, groupname="spoofed"), CreateGroupAck),
        (lambda other, _, group: AddGroup(id=other, groupid=group), AddGroupAck),
        (lambda other, _, group: GroupChat(id=other, groupid=group, msg="x"), GroupChatAck),
        (lambda other, _, __: Logout(id=other), LogoutAck),
    ],
    ids=["OneChat", "AddFriend", "CreateGroup", "AddGroup", "GroupChat", "Logout"],
)
async def test_claiming_another_sender_is_refused(
    chat_cluster: ChatCluster,
    make: Callable[[int, int, int], Request],
    answer: type[Answer],
) -> None:
    """An ``id`` naming someone else gets errno 21; nothing happens and nothing is delivered."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    carol = await node.register("carol")
    a = await node.login(alice)
    await a.send(CreateGroup(groupname="team"))
    [created] = a.session.of_type(CreateGroupAck)
    assert created.groupid is not None
    b = await node.login(bob)
    await b.send(AddGroup(groupid=created.groupid))  # alice and bob in the group
    c = await node.login(carol)
    for client in (a, b, c):
        client.session.clear()
    before = dict(node.store.calls)

    await a.send(make(bob, carol, created.groupid))
    await chat_cluster.settle()

    [reply] = a.session.received
    assert isinstance(reply, answer)
    assert reply.errno == 21
    assert b.session.received == c.session.received == []
    assert dict(node.store.calls) == before  # no friendship, group, membership or message
    assert a.state.user_id == alice  # a spoofed logout logs nobody out
    assert node.service.registry.has(bob)


async def test_delivered_chat_carries_the_real_sender(chat_cluster: ChatCluster) -> None:
    """A push names the session's user, the server's time and a fresh mid, whatever was sent."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a, b = await node.login(alice), await node.login(bob)
    b.session.clear()
    await a.send(OneChat(toid=bob, msg="hello", name="mallory", time="1999-01-01 00:00:00"))
    await a.send(OneChat(id=alice, toid=bob, msg="again"))
    await chat_cluster.settle()
    first, second = b.session.of_type(OneChat)
    for push in (first, second):
        assert (push.id, push.name, push.toid) == (alice, "alice", bob)
        assert push.time is not None
        assert _TIME.fullmatch(push.time)
        assert push.time != "1999-01-01 00:00:00"
        assert push.mid
        assert push.ref is None
    assert first.time is not None
    assert abs(time.mktime(time.strptime(first.time, "%Y-%m-%d %H:%M:%S")) - time.time()) < 5
    assert first.mid != second.mid
    assert (first.msg, second.msg) == ("hello", "again")


async def test_chat_with_ref_is_acknowledged_with_its_mid(chat_cluster: ChatCluster) -> None:
    """A chat request carrying ``ref`` gets a OneChatAck with that ref and the delivered mid."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a, b = await node.login(alice), await node.login(bob)
    await a.send(OneChat(toid=bob, msg="hi", ref=99))
    await chat_cluster.settle()
    [ack] = a.session.of_type(OneChatAck)
    [push] = b.session.of_type(OneChat)
    assert (ack.errno, ack.ref, ack.mid) == (0, 99, push.mid)


async def test_chat_to_an_unknown_user_is_refused(chat_cluster: ChatCluster) -> None:
    """A message to an id nobody has gets errno 30 and is not stored."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    a = await node.login(alice)
    a.session.clear()
    await a.send(OneChat(toid=4242, msg="anyone?", ref=3))
    await chat_cluster.settle()
    [reply] = a.session.received
    assert isinstance(reply, OneChatAck)
    assert (reply.errno, reply.ref) == (ErrorCode.UNKNOWN_USER, 3)
    assert node.store.calls["append"] == 0


async def test_online_recipient_gets_the_message_once(chat_cluster: ChatCluster) -> None:
    """A recipient logged in on the sender's node gets the push exactly once; it is logged."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a, b = await node.login(alice), await node.login(bob)
    b.session.clear()
    await a.send(OneChat(toid=bob, msg="hi"))
    await chat_cluster.settle()
    assert [m.msg for m in b.session.of_type(OneChat)] == ["hi"]
    assert len(b.session.received) == 1
    assert a.session.of_type(OneChat) == []
    assert len(await chat_cluster.log_of(bob)) == 1


async def test_recipient_on_another_node_gets_the_message_once(chat_cluster: ChatCluster) -> None:
    """Through the bus, a recipient on another node gets the push once; it is logged."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    a, b = await first.login(alice), await second.login(bob)
    b.session.clear()
    await a.send(OneChat(toid=bob, msg="over there"))
    await chat_cluster.settle()
    [push] = b.session.received
    assert isinstance(push, OneChat)
    assert (push.id, push.name, push.msg) == (alice, "alice", "over there")
    assert len(await chat_cluster.log_of(bob)) == 1
