"""Adding friends through ChatService (docs/protocol.md §2.5)."""

import msgspec

from clusterchat.protocol import AddFriend, AddFriendAck, ErrorCode, FriendEntry, LoginAck
from clusterchat.service.context import Policy
from tests.support.service import ChatCluster, ChatNode


async def _friend_ids(node: ChatNode, user_id: int) -> list[int]:
    ack: LoginAck = await node.connect().login(user_id)
    return [msgspec.json.decode(f, type=FriendEntry).id for f in ack.friends]


async def test_friendship_goes_both_ways(chat_cluster: ChatCluster) -> None:
    """After one add, each user finds the other in the friends of their next login."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    a.session.clear()
    await a.send(AddFriend(friendid=bob))
    assert a.session.received == [AddFriendAck(errno=0, friendid=bob)]
    assert await _friend_ids(node, alice) == [bob]
    assert await _friend_ids(node, bob) == [alice]


async def test_adding_a_friend_twice_is_refused(chat_cluster: ChatCluster) -> None:
    """Adding an existing friend, from either side, gets errno 32 and no duplicate."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a, b = await node.login(alice), await node.login(bob)
    await a.send(AddFriend(friendid=bob))
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
    node = await chat_cluster.node(Policy(max_friends=1))
    alice, bob, carol = [await node.register(n) for n in ("alice", "bob", "carol")]
    a, c = await node.login(alice), await node.login(carol)
    await a.send(AddFriend(friendid=bob))
    await a.send(AddFriend(friendid=carol))
    assert a.session.of_type(AddFriendAck)[-1] == AddFriendAck(
        errno=19, errmsg="you have the most friends: 1"
    )
    await c.send(AddFriend(friendid=alice))
    assert c.session.of_type(AddFriendAck)[-1] == AddFriendAck(
        errno=19, errmsg="that user has the most friends: 1"
    )
    assert await _friend_ids(node, alice) == [bob]
