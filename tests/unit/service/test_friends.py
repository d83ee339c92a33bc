"""Adding friends through ChatService (docs/protocol.md §2.5)."""

import msgspec

from clusterchat.protocol import (
    AddFriend,
    AddFriendAck,
    ErrorCode,
    FriendEntry,
    FriendRequest,
    LoginAck,
    RequestEntry,
)
from tests.support.defaults import policy_with
from tests.support.service import ChatCluster, ChatNode


async def _friend_ids(node: ChatNode, user_id: int) -> list[int]:
    ack: LoginAck = await node.connect().login(user_id)
    return [msgspec.json.decode(f, type=FriendEntry).id for f in ack.friends]


async def _request_ids(node: ChatNode, user_id: int) -> list[int]:
    ack: LoginAck = await node.connect().login(user_id)
    return [msgspec.json.decode(r, type=RequestEntry).id for r in ack.requests]


async def test_a_request_needs_the_other_sides_consent(chat_cluster: ChatCluster) -> None:
    """A asks B: B gets a push (on any node) and the request at login; B asks back: friends."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    a, b = await first.login(alice), await second.login(bob)
    a.session.clear()
    await a.send(AddFriend(friendid=bob))
    assert a.session.received == [AddFriendAck(errno=0, friendid=bob, pending=True)]
    await chat_cluster.settle()
    assert b.session.of_type(FriendRequest) == [FriendRequest(id=alice, name="alice")]
    # Not friends yet: neither sees the other (nor the other's presence).
    assert await _friend_ids(first, alice) == []
    assert await _friend_ids(second, bob) == []
    assert await _request_ids(second, bob) == [alice]
    assert await _request_ids(first, alice) == []
    # Asking again changes nothing and pushes nothing new.
    await a.send(AddFriend(friendid=bob))
    assert a.session.of_type(AddFriendAck)[-1] == AddFriendAck(errno=0, friendid=bob, pending=True)
    await chat_cluster.settle()
    assert len(b.session.of_type(FriendRequest)) == 1
    # Bob asks back (what a classic client can do): they are friends.
    b.session.clear()
    await b.send(AddFriend(friendid=alice))
    assert b.session.received == [AddFriendAck(errno=0, friendid=alice)]
    assert await _friend_ids(first, alice) == [bob]
    assert await _friend_ids(second, bob) == [alice]
    assert await _request_ids(second, bob) == []


async def test_adding_a_friend_twice_is_refused(chat_cluster: ChatCluster) -> None:
    """Adding an existing friend, from either side, gets errno 32 and no duplicate."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    await node.befriend(alice, bob)
    a, b = await node.login(alice), await node.login(bob)
    await a.send(AddFriend(friendid=bob))
    await b.send(AddFriend(friendid=alice))
    assert a.session.of_type(AddFriendAck)[-1].errno == 32
    assert b.session.of_type(AddFriendAck)[-1].errno == ErrorCode.ALREADY_FRIENDS
    assert await _friend_ids(node, alice) == [bob]


async def test_adding_yourself_is_refused(chat_cluster: ChatCluster) -> None:
    """A user cannot befriend themselves: errno 33."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    a = await node.login(alice)
    await a.send(AddFriend(friendid=alice))
    assert a.session.of_type(AddFriendAck)[-1].errno == 33
    assert await _friend_ids(node, alice) == []


async def test_adding_an_unknown_user_is_refused(chat_cluster: ChatCluster) -> None:
    """Befriending an id nobody has gets errno 30."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    a = await node.login(alice)
    await a.send(AddFriend(friendid=4242))
    assert a.session.of_type(AddFriendAck)[-1].errno == 30
    assert await _friend_ids(node, alice) == []


async def test_friends_are_bounded_on_both_sides(chat_cluster: ChatCluster) -> None:
    """At max_friends an add gets errno 19, whichever side is full."""
    node = await chat_cluster.node(policy_with(max_friends=1))
    alice, bob, carol = [await node.register(n) for n in ("alice", "bob", "carol")]
    await node.befriend(alice, bob)
    a, c = await node.login(alice), await node.login(carol)
    await a.send(AddFriend(friendid=carol))
    assert a.session.of_type(AddFriendAck)[-1] == AddFriendAck(
        errno=19, errmsg="you have the most friends: 1"
    )
    await c.send(AddFriend(friendid=alice))
    assert c.session.of_type(AddFriendAck)[-1] == AddFriendAck(
        errno=19, errmsg="that user has the most friends: 1"
    )
    assert await _friend_ids(node, alice) == [bob]
