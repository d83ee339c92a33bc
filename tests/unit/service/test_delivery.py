"""Delivery through ChatService: offline storage, drains, several sessions, several nodes.

ARCHITECTURE.md delivery rules 1-10; src/clusterchat/service/delivery.py has the
theory of operation these tests hold it to.
"""

import asyncio

import msgspec

from clusterchat.protocol import Login, LoginAck, OneChat
from clusterchat.service.context import Policy
from clusterchat.service.delivery import user_channel
from tests.support.service import PASSWORD, ChatCluster, Client


def _texts(client: Client) -> list[str]:
    return [push.msg for push in client.session.of_type(OneChat)]


def _offline_texts(ack: LoginAck) -> list[str]:
    return [msgspec.json.decode(m, type=OneChat).msg for m in ack.offlinemsg]


async def test_offline_recipient_gets_everything_at_next_login(chat_cluster: ChatCluster) -> None:
    """Messages to an offline user come in order in the next login answer, then are deleted."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    texts = [f"message {i}" for i in range(5)]
    for text in texts:
        await a.send(OneChat(toid=bob, msg=text))
    await chat_cluster.settle()

    b = node.connect()
    ack = await b.login(bob)
    assert _offline_texts(ack) == texts
    stored = [msgspec.json.decode(m, type=OneChat) for m in ack.offlinemsg]
    assert {(m.id, m.name, m.toid) for m in stored} == {(alice, "alice", bob)}
    assert all(m.mid for m in stored)
    assert b.session.received == [ack]
    raw = msgspec.json.decode(b.session.raw[0])
    assert all(isinstance(item, str) for item in raw["offlinemsg"])  # JSON texts, classic
    assert await chat_cluster.stored_for(bob) == []

    again = await node.connect().login(bob)
    assert again.offlinemsg == []


async def test_stored_messages_beyond_one_batch_follow_the_login_answer(
    chat_cluster: ChatCluster,
) -> None:
    """Past ``offline_batch``, the rest come as pushes after the answer: in order, once each."""
    node = await chat_cluster.node(Policy(offline_batch=3))
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    texts = [f"message {i}" for i in range(8)]
    for text in texts:
        await a.send(OneChat(toid=bob, msg=text))
    await chat_cluster.settle()

    b = node.connect()
    ack = await b.login(bob)
    await chat_cluster.settle()
    assert _offline_texts(ack) == texts[:3]
    assert b.session.received[0] is ack
    assert _texts(b) == texts[3:]
    assert len(b.session.received) == 1 + 5
    assert await chat_cluster.stored_for(bob) == []
    assert (await node.connect().login(bob)).offlinemsg == []


async def test_push_during_login_waits_for_the_login_answer(chat_cluster: ChatCluster) -> None:
    """A message arriving while a login is in progress is sent right after the LoginAck."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    b = node.connect()
    gate = node.store.hold("friends_of")  # the login has subscribed, not yet answered
    login = asyncio.create_task(b.login(bob))
    await gate.reached()
    assert node.service.registry.has(bob)

    await a.send(OneChat(toid=bob, msg="early"))
    await chat_cluster.settle(ignore=[login])
    assert b.session.received == []

    gate.release()
    ack = await login
    await chat_cluster.settle()
    assert b.session.received[0] is ack
    assert ack.offlinemsg == []
    assert _texts(b) == ["early"]
    assert await chat_cluster.stored_for(bob) == []


async def test_two_sessions_on_one_node_each_get_a_message_once(
    chat_cluster: ChatCluster,
) -> None:
    """Two sessions of one user on the same node each get every message exactly once."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    b1, b2 = await node.login(bob), await node.login(bob)
    b1.session.clear()
    b2.session.clear()
    for text in ("one", "two"):
        await a.send(OneChat(toid=bob, msg=text))
    await chat_cluster.settle()
    assert _texts(b1) == _texts(b2) == ["one", "two"]
    assert len(b1.session.received) == len(b2.session.received) == 2
    assert await chat_cluster.stored_for(bob) == []


async def test_two_sessions_on_two_nodes_each_get_a_message_once(
    chat_cluster: ChatCluster,
) -> None:
    """A user on two nodes gets every message once on each, whichever node sends."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    a1, a2 = await first.login(alice), await second.login(alice)
    b1, b2 = await first.login(bob), await second.login(bob)
    b1.session.clear()
    b2.session.clear()
    await a1.send(OneChat(toid=bob, msg="from the first node"))
    await a2.send(OneChat(toid=bob, msg="from the second node"))
    await chat_cluster.settle()
    for b in (b1, b2):
        assert sorted(_texts(b)) == ["from the first node", "from the second node"]
        assert len(b.session.received) == 2
    assert await chat_cluster.stored_for(bob) == []


async def test_outage_stores_a_message_for_another_node_and_drains_it_after(
    chat_cluster: ChatCluster,
) -> None:
    """While the bus is down a message for a user on another node is stored, then drained once."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    a, b = await first.login(alice), await second.login(bob)
    b.session.clear()

    chat_cluster.outage()
    for text in ("during", "the outage"):
        await a.send(OneChat(toid=bob, msg=text))
    await chat_cluster.settle()
    assert b.session.received == []
    assert len(await chat_cluster.stored_for(bob)) == 2

    chat_cluster.restore()
    await chat_cluster.settle()
    assert _texts(b) == ["during", "the outage"]
    assert len(b.session.received) == 2
    assert await chat_cluster.stored_for(bob) == []

    chat_cluster.restore()  # a second recovery finds nothing left to send
    await chat_cluster.settle()
    assert len(b.session.received) == 2


async def test_outage_reaches_a_local_recipient_once(chat_cluster: ChatCluster) -> None:
    """During an outage a local recipient gets the message live, and not again from the drain."""
    first, _ = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    a, b = await first.login(alice), await first.login(bob)
    b.session.clear()

    chat_cluster.outage()
    await a.send(OneChat(toid=bob, msg="live"))
    assert _texts(b) == ["live"]  # at once, before any publish completed
    await chat_cluster.settle()
    assert first.store.calls["store_messages"] == 1  # stored for bob's other nodes, if any

    chat_cluster.restore()
    await chat_cluster.settle()
    assert _texts(b) == ["live"]
    assert len(b.session.received) == 1
    assert await chat_cluster.stored_for(bob) == []


async def test_refused_push_is_stored_for_the_next_login(chat_cluster: ChatCluster) -> None:
    """A session that refuses a push (slow consumer) leaves it stored for the next login."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a, b = await node.login(alice), await node.login(bob)
    b.session.clear()
    b.session.refusing = True

    await a.send(OneChat(toid=bob, msg="are you there?"))
    await chat_cluster.settle()
    assert b.session.received == []
    assert b.session.closed_reason == "slow consumer"
    await b.close()  # the transport reports the closed connection
    await chat_cluster.settle()
    assert len(await chat_cluster.stored_for(bob)) == 1

    ack = await node.connect().login(bob)
    assert _offline_texts(ack) == ["are you there?"]
    assert await chat_cluster.stored_for(bob) == []


async def test_receiving_node_stores_for_a_user_who_just_left(chat_cluster: ChatCluster) -> None:
    """An envelope reaching a node whose user has no session there any more is stored there."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    a = await first.login(alice)
    b = await second.login(bob)
    await b.close()
    # The logout race: the second node is still subscribed to bob's channel (its
    # unsubscribe has not reached the bus yet), so the publish counts one receiver
    # and the sending node does not store. The receiving node must.
    await second.bus.subscribe(user_channel(bob))

    await a.send(OneChat(toid=bob, msg="just missed you"))
    await chat_cluster.settle()
    assert first.store.calls["store_messages"] == 0
    assert second.store.calls["store_messages"] == 1
    await second.bus.unsubscribe(user_channel(bob))

    ack = await first.connect().login(bob)
    assert _offline_texts(ack) == ["just missed you"]


async def test_push_held_during_a_failed_login_is_stored(chat_cluster: ChatCluster) -> None:
    """A message held for a login whose answer the session refuses stays stored, not lost."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    b = node.connect()
    gate = node.store.hold("friends_of")
    login = asyncio.create_task(b.send(Login(id=bob, password=PASSWORD)))
    await gate.reached()
    await a.send(OneChat(toid=bob, msg="held"))
    await chat_cluster.settle(ignore=[login])
    assert await chat_cluster.stored_for(bob) == []  # held for the session, not stored

    b.session.refusing = True  # too slow to take even the login answer
    gate.release()
    await login
    assert b.session.received == []
    await b.close()
    await chat_cluster.settle()

    ack = await node.connect().login(bob)
    assert _offline_texts(ack) == ["held"]


async def test_outage_with_sessions_on_two_nodes_reaches_the_user_once_per_session(
    chat_cluster: ChatCluster,
) -> None:
    """Outage, user on two nodes: the user gets it, no session twice, nothing left stored.

    docs/delivery.md, guarantee 4: the undelivered store is per user, so the
    session on the other node gets it only if its node drains first.
    """
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    a = await first.login(alice)
    b1, b2 = await first.login(bob), await second.login(bob)
    b1.session.clear()
    b2.session.clear()

    chat_cluster.outage()
    await a.send(OneChat(toid=bob, msg="split"))
    assert _texts(b1) == ["split"]
    await chat_cluster.settle()
    chat_cluster.restore()
    await chat_cluster.settle()

    assert _texts(b1) == ["split"]
    assert _texts(b2) in ([], ["split"])
    assert len(b1.session.received) == 1
    assert len(b2.session.received) <= 1
    assert await chat_cluster.stored_for(bob) == []


async def test_session_that_refused_its_login_answer_takes_no_stored_message(
    chat_cluster: ChatCluster,
) -> None:
    """A drain before the refusing session is reported closed leaves its messages stored."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    await a.send(OneChat(toid=bob, msg="first"))
    await chat_cluster.settle()

    b = node.connect()
    b.session.refusing = True
    await b.send(Login(id=bob, password=PASSWORD))  # the answer (with "first") is refused
    await a.send(OneChat(toid=bob, msg="second"))  # refused too: stored, then drained
    await chat_cluster.settle()
    assert b.session.received == []
    await b.close()  # only now does the transport report the closed connection

    ack = await node.connect().login(bob)
    assert _offline_texts(ack) == ["first", "second"]


async def test_periodic_sweep_delivers_a_message_whose_drain_notice_was_lost(
    chat_cluster: ChatCluster,
) -> None:
    """A message stored for an online user with no DRAIN notice arrives with the next sweep."""
    node = await chat_cluster.node(Policy(sweep_interval=0.05))
    alice = await node.register("alice")
    bob = await node.register("bob")
    b = await node.login(bob)
    # As if another node stored it while its notice could not be published.
    payload = OneChat(toid=bob, msg="found by the sweep", id=alice, name="alice", mid="x-1")
    await node.store.inner.store_messages([(bob, "x-1", msgspec.json.encode(payload))])
    deadline = asyncio.get_running_loop().time() + 5
    while "found by the sweep" not in _texts(b):
        assert asyncio.get_running_loop().time() < deadline, "the sweep never delivered it"
        await asyncio.sleep(0.02)
    assert await chat_cluster.stored_for(bob) == []
