"""Groups through ChatService: create, join, group chat across nodes (docs/protocol.md §2.6-2.8)."""

import msgspec

from clusterchat.protocol import (
    AddGroup,
    AddGroupAck,
    CreateGroup,
    CreateGroupAck,
    ErrorCode,
    GroupChat,
    GroupChatAck,
    GroupEntry,
    GroupInvite,
    Invite,
    InviteAck,
    MemberEntry,
)
from tests.support.defaults import policy_with
from tests.support.service import ChatCluster, Client


async def _create(client: Client, name: str) -> int:
    await client.send(CreateGroup(groupname=name, groupdesc=f"about {name}"))
    ack = client.session.of_type(CreateGroupAck)[-1]
    assert ack.errno == 0, ack
    assert ack.groupid is not None
    return ack.groupid


async def _join(client: Client, group_id: int) -> None:
    await client.send(AddGroup(groupid=group_id))
    ack = client.session.of_type(AddGroupAck)[-1]
    assert ack == AddGroupAck(errno=0, groupid=group_id), ack


def _texts(client: Client) -> list[str]:
    return [push.msg for push in client.session.of_type(GroupChat)]


async def test_create_group_answers_with_its_id(chat_cluster: ChatCluster) -> None:
    """Creating a group answers errno 0 with the new id; the creator is its member."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    a = await node.login(alice)
    a.session.clear()
    await a.send(CreateGroup(groupname="team", groupdesc="d"))
    [ack] = a.session.received
    assert isinstance(ack, CreateGroupAck)
    assert (ack.errno, ack.groupname) == (0, "team")
    assert ack.groupid is not None
    login = await node.connect().login(alice)
    [entry] = [msgspec.json.decode(g, type=GroupEntry) for g in login.groups]
    assert entry.id == ack.groupid
    assert [msgspec.json.decode(u, type=MemberEntry).role for u in entry.users] == ["creator"]


async def test_create_group_with_a_taken_name_is_refused(chat_cluster: ChatCluster) -> None:
    """A second group of the same name gets errno 34 and no id."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a, b = await node.login(alice), await node.login(bob)
    await _create(a, "team")
    await b.send(CreateGroup(groupname="team"))
    ack = b.session.of_type(CreateGroupAck)[-1]
    assert ack.errno == 34
    assert ack.groupid is None


async def test_join_group(chat_cluster: ChatCluster) -> None:
    """Joining answers errno 0; the new member appears with role "normal"."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a, b = await node.login(alice), await node.login(bob)
    group = await _create(a, "team")
    await _join(b, group)
    login = await node.connect().login(bob)
    [entry] = [msgspec.json.decode(g, type=GroupEntry) for g in login.groups]
    members = [msgspec.json.decode(u, type=MemberEntry) for u in entry.users]
    assert [(m.id, m.role) for m in members] == [(alice, "creator"), (bob, "normal")]


async def test_join_unknown_group_is_refused(chat_cluster: ChatCluster) -> None:
    """Joining a group id nobody created gets errno 31."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    a = await node.login(alice)
    await a.send(AddGroup(groupid=4242))
    assert a.session.of_type(AddGroupAck)[-1].errno == 31


async def test_join_a_group_twice_is_refused(chat_cluster: ChatCluster) -> None:
    """A member joining again (the creator included) gets errno 35."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a, b = await node.login(alice), await node.login(bob)
    group = await _create(a, "team")
    await _join(b, group)
    await b.send(AddGroup(groupid=group))
    await a.send(AddGroup(groupid=group))
    assert b.session.of_type(AddGroupAck)[-1].errno == 35
    assert a.session.of_type(AddGroupAck)[-1].errno == ErrorCode.ALREADY_MEMBER


async def test_group_chat_reaches_every_member_session_on_every_node(
    chat_cluster: ChatCluster,
) -> None:
    """Each member but the sender gets a group message once per session, on both nodes."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    carol = await first.register("carol")
    a = await first.login(alice)
    a_elsewhere = await second.login(alice)
    b = await first.login(bob)
    c1, c2, c3 = await first.login(carol), await second.login(carol), await second.login(carol)
    group = await _create(a, "team")
    await _join(b, group)
    await _join(c2, group)
    await chat_cluster.settle()
    for client in (a, a_elsewhere, b, c1, c2, c3):
        client.session.clear()

    for text in ("one", "two", "three"):
        await a.send(GroupChat(groupid=group, msg=text))
    await chat_cluster.settle()

    for client in (b, c1, c2, c3):
        assert _texts(client) == ["one", "two", "three"], client.node.service.node_id
        pushes = client.session.of_type(GroupChat)
        assert {(p.id, p.name, p.groupid) for p in pushes} == {(alice, "alice", group)}
        assert len({p.mid for p in pushes}) == 3
    assert _texts(a) == _texts(a_elsewhere) == []  # the sender is excluded (rule 8)
    assert len(await chat_cluster.log_of(bob)) == len(await chat_cluster.log_of(carol)) == 3


async def test_offline_member_gets_group_messages_at_next_login(
    chat_cluster: ChatCluster,
) -> None:
    """A member who is offline finds the group's messages, in order, in the next login answer."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    dave = await first.register("dave")
    a = await first.login(alice)
    group = await _create(a, "team")
    d = await second.login(dave)
    await _join(d, group)
    await d.close()
    for text in ("one", "two"):
        await a.send(GroupChat(groupid=group, msg=text))
    await chat_cluster.settle()
    ack = await second.connect().login(dave)
    pushes = [msgspec.json.decode(m, type=GroupChat) for m in ack.offlinemsg]
    assert [(p.msg, p.id, p.groupid) for p in pushes] == [
        ("one", alice, group),
        ("two", alice, group),
    ]


async def test_non_member_cannot_post(chat_cluster: ChatCluster) -> None:
    """A user outside the group gets errno 36 and the members get nothing."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    eve = await node.register("eve")
    a, e = await node.login(alice), await node.login(eve)
    group = await _create(a, "team")
    a.session.clear()
    for _ in range(2):  # the second attempt takes the cached path
        await e.send(GroupChat(groupid=group, msg="let me in", ref=5))
        reply = e.session.of_type(GroupChatAck)[-1]
        assert (reply.errno, reply.ref) == (ErrorCode.NOT_A_MEMBER, 5)
        assert reply.errno == 36
    await chat_cluster.settle()
    assert a.session.received == []


async def test_group_chat_to_unknown_group_is_refused(chat_cluster: ChatCluster) -> None:
    """A message to a group id nobody created gets errno 31."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    a = await node.login(alice)
    await a.send(GroupChat(groupid=4242, msg="hello?"))
    assert a.session.of_type(GroupChatAck)[-1].errno == ErrorCode.UNKNOWN_GROUP


async def test_member_who_joins_on_another_node_gets_the_next_message(
    chat_cluster: ChatCluster,
) -> None:
    """Joining on node B invalidates node A's cached members through the bus."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    carol = await first.register("carol")
    a, b = await first.login(alice), await first.login(bob)
    group = await _create(a, "team")
    await _join(b, group)
    await a.send(GroupChat(groupid=group, msg="before"))  # node A caches the members
    assert first.service.ctx.groups.cached(group) == frozenset({alice, bob})

    c = await second.login(carol)
    await _join(c, group)
    await chat_cluster.settle()
    await a.send(GroupChat(groupid=group, msg="after"))
    await chat_cluster.settle()

    assert _texts(c) == ["after"]
    assert _texts(b) == ["before", "after"]


async def test_a_full_group_refuses_new_members(chat_cluster: ChatCluster) -> None:
    """At max_group_size a join gets errno 19 naming the limit (fan-out is bounded)."""
    node = await chat_cluster.node(policy_with(max_group_size=2))
    alice, bob, carol = [await node.register(n) for n in ("alice", "bob", "carol")]
    a, b, c = await node.login(alice), await node.login(bob), await node.login(carol)
    group = await _create(a, "pair")
    await _join(b, group)
    await c.send(AddGroup(groupid=group))
    refused = c.session.of_type(AddGroupAck)[-1]
    assert (refused.errno, refused.errmsg) == (19, f"group {group} is full: 2")


async def test_an_invite_only_group_takes_whom_its_creator_invited(
    chat_cluster: ChatCluster,
) -> None:
    """Uninvited joins get errno 38; the creator invites (others get 39); the invitee joins."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice, bob, carol = [await first.register(n) for n in ("alice", "bob", "carol")]
    a, b, c = await first.login(alice), await second.login(bob), await first.login(carol)
    await a.send(CreateGroup(groupname="inner", invite_only=True))
    group = a.session.of_type(CreateGroupAck)[-1].groupid
    assert group is not None
    await b.send(AddGroup(groupid=group))
    refused = b.session.of_type(AddGroupAck)[-1]
    assert (refused.errno, refused.errmsg) == (38, f"group {group} takes invited users only")
    await c.send(Invite(groupid=group, userid=bob))
    assert c.session.of_type(InviteAck)[-1].errno == 39
    await a.send(Invite(groupid=group, userid=bob))
    assert a.session.of_type(InviteAck)[-1] == InviteAck(errno=0, groupid=group, userid=bob)
    await chat_cluster.settle()
    assert b.session.of_type(GroupInvite) == [
        GroupInvite(groupid=group, groupname="inner", id=alice, name="alice")
    ]
    await _join(b, group)
    await c.send(AddGroup(groupid=group))
    assert c.session.of_type(AddGroupAck)[-1].errno == 38


# --- one publish per group message: the nodes listen on their users' groups' channels ----


async def test_a_join_through_another_node_makes_this_node_listen_on_the_group(
    chat_cluster: ChatCluster,
) -> None:
    """Carol's session on node B gets group messages live after she joined through node A.

    A group message is published once, on the group's channel; node B learns
    that it must listen there from the join's announcement, which names her.
    (The periodic sweep, 30 s, would find the messages late otherwise.)
    """
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice, carol = await first.register("alice"), await first.register("carol")
    a = await first.login(alice)
    group = await _create(a, "team")
    c_second = await second.login(carol)
    assert not second.service.ctx.group_channels.subscribed(group)
    c_first = await first.login(carol)
    await _join(c_first, group)
    await chat_cluster.settle()
    assert second.service.ctx.group_channels.subscribed(group)

    await a.send(GroupChat(groupid=group, msg="welcome"))
    await chat_cluster.settle()
    assert _texts(c_second) == _texts(c_first) == ["welcome"]


async def test_a_node_stops_listening_when_the_last_local_member_leaves(
    chat_cluster: ChatCluster,
) -> None:
    """The group's channel is listened on while a member is logged in on the node, no longer."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice, bob = await first.register("alice"), await first.register("bob")
    a = await first.login(alice)
    group = await _create(a, "team")
    b1, b2 = await second.login(bob), await second.login(bob)
    await _join(b1, group)
    channels = second.service.ctx.group_channels
    assert channels.subscribed(group)
    await b1.close()
    assert channels.subscribed(group)  # bob still has a session here
    await b2.close()
    assert not channels.subscribed(group)
    assert f"group:{group}" not in set(second.service.bus_channels())

    await a.send(GroupChat(groupid=group, msg="while away"))
    await chat_cluster.settle()
    ack = await second.connect().login(bob)
    assert [msgspec.json.decode(m, type=GroupChat).msg for m in ack.offlinemsg] == ["while away"]
    assert channels.subscribed(group)  # listening again: bob's groups are read at login


async def test_a_join_announced_while_the_bus_was_down_is_heard_at_restore(
    chat_cluster: ChatCluster,
) -> None:
    """After an outage a node reads its users' memberships again before comparing logs.

    Carol, logged in on node B, joins through node A while the bus is down:
    B never hears the announcement, but listens on the group once the bus is
    back, so the next message reaches her session on B live.
    """
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice, carol = await first.register("alice"), await first.register("carol")
    a = await first.login(alice)
    group = await _create(a, "team")
    c_second = await second.login(carol)
    c_first = await first.login(carol)
    await chat_cluster.outage()
    await _join(c_first, group)
    await chat_cluster.restore()
    await chat_cluster.settle()
    assert second.service.ctx.group_channels.subscribed(group)

    await a.send(GroupChat(groupid=group, msg="after the outage"))
    await chat_cluster.settle()
    assert _texts(c_second) == ["after the outage"]


async def test_failed_group_publishes_are_announced_again_for_every_member(
    local_chat_cluster: ChatCluster,
) -> None:
    """After publishes failed, each member's furthest position is announced again.

    Two group messages are lost on the bus (the nodes never noticed an
    outage): alice's, then carol's. Carol has no entry in her own message, so
    announcing only the latest envelope again would leave her session on
    node B without alice's message until the periodic sweep (30 s).
    """
    chat_cluster = local_chat_cluster
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice, bob, carol = [await first.register(n) for n in ("alice", "bob", "carol")]
    a, c_first = await first.login(alice), await first.login(carol)
    b, c_second = await second.login(bob), await second.login(carol)
    group = await _create(a, "team")
    await _join(b, group)
    await _join(c_first, group)
    await chat_cluster.settle()
    chat_cluster.hub.down = True
    await a.send(GroupChat(groupid=group, msg="from alice"))
    await c_first.send(GroupChat(groupid=group, msg="from carol"))
    await first.service.ctx.writer.flush()
    chat_cluster.hub.down = False  # back, but nobody noticed the outage
    await chat_cluster.settle()
    assert _texts(b) == ["from alice", "from carol"]
    assert _texts(c_second) == ["from alice"]
