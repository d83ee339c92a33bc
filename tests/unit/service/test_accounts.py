"""Register, login and logout through ChatService (docs/protocol.md §2.1-2.3)."""

import msgspec

from clusterchat.protocol import (
    AddGroup,
    CreateGroup,
    CreateGroupAck,
    ErrorCode,
    FriendEntry,
    GroupEntry,
    Login,
    LoginAck,
    Logout,
    LogoutAck,
    MemberEntry,
    RegAck,
    Register,
)
from tests.support.defaults import policy_with
from tests.support.service import PASSWORD, ChatCluster


async def test_register_answers_with_the_new_id(chat_cluster: ChatCluster) -> None:
    """A registration is answered with errno 0 and an id that can log in."""
    node = await chat_cluster.node()
    client = node.connect()
    await client.send(Register(name="alice", password=PASSWORD))
    [ack] = client.session.received
    assert isinstance(ack, RegAck)
    assert ack.errno == 0
    assert ack.id is not None
    login = await node.connect().login(ack.id)
    assert (login.errno, login.id, login.name) == (0, ack.id, "alice")


async def test_register_with_a_taken_name_is_refused(chat_cluster: ChatCluster) -> None:
    """A second registration of one name gets RegAck errno 1 (classic) and no id."""
    node = await chat_cluster.node()
    await node.register("alice")
    client = node.connect()
    await client.send(Register(name="alice", password="other"))
    [ack] = client.session.received
    assert isinstance(ack, RegAck)
    assert ack.errno == 1
    assert ack.id is None
    assert ack.errmsg


async def test_chinese_name_round_trips(chat_cluster: ChatCluster) -> None:
    """A UTF-8 Chinese name comes back unchanged in the login answer and in friends lists."""
    node = await chat_cluster.node()
    zhang = await node.register("张三")
    li = await node.register("李四")
    await node.befriend(zhang, li)
    again = node.connect()
    ack = await again.login(zhang)
    assert ack.name == "张三"
    assert "张三".encode() in again.session.raw[-1]  # raw UTF-8, as the classic server wrote
    other = await node.connect().login(li)
    assert other.name == "李四"
    assert [msgspec.json.decode(f, type=FriendEntry).name for f in other.friends] == ["张三"]


async def test_a_name_too_long_once_normalised_is_refused(chat_cluster: ChatCluster) -> None:
    """Four U+FDFA pass the 64-character limit but are 72 after NFKC: errno 13, for
    users and groups alike (PostgreSQL and MySQL would refuse to store them)."""
    node = await chat_cluster.node()
    client = node.connect()
    await client.send(Register(name="\ufdfa" * 4, password=PASSWORD))
    [ack] = client.session.received
    assert isinstance(ack, RegAck)
    assert (ack.errno, ack.errmsg) == (
        ErrorCode.INVALID_FIELD,
        "name: too long once normalised (72 characters, at most 64)",
    )
    alice = await node.register("alice")
    creator = node.connect()
    await creator.login(alice)
    await creator.send(CreateGroup(groupname="\ufdfa" * 4, groupdesc=""))
    answer = creator.session.received[-1]
    assert isinstance(answer, CreateGroupAck)
    assert answer.errno == ErrorCode.INVALID_FIELD


async def test_login_answer_has_the_classic_shape(chat_cluster: ChatCluster) -> None:
    """friends and groups travel as lists of JSON strings; members carry role and state."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    carol = await node.register("carol")
    await node.befriend(alice, bob)
    a = await node.login(alice)
    await a.send(CreateGroup(groupname="team", groupdesc="the team"))
    [created] = a.session.of_type(CreateGroupAck)
    assert created.groupid is not None
    c = await node.login(carol)
    await c.send(AddGroup(groupid=created.groupid))

    client = node.connect()
    ack = await client.login(alice)
    assert (ack.errno, ack.id, ack.name) == (0, alice, "alice")
    assert ack.offlinemsg == []
    assert all(isinstance(item, str) for item in ack.friends + ack.groups)
    friends = [msgspec.json.decode(f, type=FriendEntry) for f in ack.friends]
    assert friends == [FriendEntry(id=bob, name="bob", state="offline")]
    [group_text] = ack.groups
    group = msgspec.json.decode(group_text, type=GroupEntry)
    assert (group.id, group.groupname, group.groupdesc) == (created.groupid, "team", "the team")
    assert all(isinstance(user, str) for user in group.users)
    members = [msgspec.json.decode(u, type=MemberEntry) for u in group.users]
    assert members == [
        MemberEntry(id=alice, name="alice", role="creator", state="online"),
        MemberEntry(id=carol, name="carol", role="normal", state="online"),
    ]
    raw = msgspec.json.decode(client.session.raw[-1])
    assert "offlinemsg" not in raw
    assert isinstance(raw["friends"][0], str)
    assert isinstance(raw["groups"][0], str)


async def test_login_answer_omits_empty_lists(chat_cluster: ChatCluster) -> None:
    """A user with no friends, groups or stored messages gets none of the three keys."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    client = node.connect()
    await client.login(alice)
    raw = msgspec.json.decode(client.session.raw[-1])
    assert raw == {"errno": 0, "id": alice, "msgid": 2, "name": "alice"}


async def test_friend_state_follows_presence(chat_cluster: ChatCluster) -> None:
    """A friend logged in on another node reads "online", one logged out "offline"."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    await first.befriend(alice, bob)
    b = await second.login(bob)
    online = await first.connect().login(alice)
    assert [msgspec.json.decode(f, type=FriendEntry).state for f in online.friends] == ["online"]
    await b.close()
    offline = await first.connect().login(alice)
    assert [msgspec.json.decode(f, type=FriendEntry).state for f in offline.friends] == ["offline"]


async def test_bad_password_is_refused(chat_cluster: ChatCluster) -> None:
    """A wrong password gets errno 1 "id or password is invalid!" and no session."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    client = node.connect()
    ack = await client.login(alice, "wrong")
    assert (ack.errno, ack.errmsg, ack.id) == (1, "id or password is invalid!", None)
    assert not client.state.logged_in
    assert not node.service.registry.has(alice)


async def test_unknown_id_is_refused_like_a_bad_password(chat_cluster: ChatCluster) -> None:
    """An id nobody has gets the same errno 1 answer as a wrong password."""
    node = await chat_cluster.node()
    client = node.connect()
    ack = await client.login(4242)
    assert (ack.errno, ack.errmsg) == (1, "id or password is invalid!")
    assert not client.state.logged_in


async def test_single_session_policy_refuses_a_second_login(chat_cluster: ChatCluster) -> None:
    """With single_session, a second login anywhere in the cluster gets errno 2."""
    single = policy_with(single_session=True)
    first, second = await chat_cluster.node(single), await chat_cluster.node(single)
    alice = await first.register("alice")
    await first.login(alice)
    for node in (first, second):
        client = node.connect()
        ack = await client.login(alice)
        assert (ack.errno, ack.errmsg) == (2, "this account is using, input another!")
        assert not client.state.logged_in
    assert len(first.service.registry.local(alice)) == 1
    assert not second.service.registry.has(alice)


async def test_default_policy_allows_two_sessions(chat_cluster: ChatCluster) -> None:
    """By default the same user may log in on two connections at once."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    await node.login(alice)
    await node.login(alice)
    assert len(node.service.registry.local(alice)) == 2


async def test_login_twice_on_one_connection_is_refused(chat_cluster: ChatCluster) -> None:
    """A connection already logged in cannot log in again (errno 2) and keeps its user."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    client = await node.login(alice)
    ack = await client.login(bob)
    assert ack.errno == ErrorCode.ALREADY_LOGGED_IN
    assert client.state.user_id == alice
    assert not node.service.registry.has(bob)


async def test_logout_ends_the_session_and_allows_a_new_login(chat_cluster: ChatCluster) -> None:
    """Logout answers errno 0, leaves the registry, and the connection may log in again."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    client = await node.login(alice)
    await client.send(Logout(id=alice))
    assert client.session.of_type(LogoutAck) == [LogoutAck(errno=0)]
    assert not node.service.registry.has(alice)
    assert not await chat_cluster.presence.online([alice])
    await client.send(Login(id=alice, password=PASSWORD))
    assert client.session.of_type(LoginAck)[-1].errno == 0
    assert node.service.registry.has(alice)


async def test_sessions_per_user_are_bounded(chat_cluster: ChatCluster) -> None:
    """A login past max_sessions_per_user on one node: errno 19, closed; other nodes apart."""
    first = await chat_cluster.node(policy_with(max_sessions_per_user=2))
    alice = await first.register("alice")
    await first.login(alice)
    await first.login(alice)
    client = first.connect()
    ack = await client.login(alice)
    assert (ack.errno, ack.errmsg) == (
        19,
        "too many sessions of this user on this node: 2; disconnected",
    )
    assert not client.state.logged_in
    assert client.session.closed_reason is not None
    second = await chat_cluster.node(policy_with(max_sessions_per_user=2))
    await second.login(alice)
