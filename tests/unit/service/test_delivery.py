"""Delivery through ChatService: the log, feeds, cursors, several sessions and nodes.

ARCHITECTURE.md delivery rules; src/clusterchat/service/feed.py and
delivery.py have the theory of operation these tests hold them to.
"""

import asyncio

import msgspec
import pytest

from clusterchat.protocol import (
    Ack,
    CreateGroup,
    CreateGroupAck,
    Error,
    GroupChat,
    GroupChatAck,
    Login,
    LoginAck,
    OneChat,
    OneChatAck,
)
from tests.support.defaults import policy_with
from tests.support.service import PASSWORD, ChatCluster, Client, until


def _texts(client: Client) -> list[str]:
    return [push.msg for push in client.session.of_type(OneChat)]


def _offline_texts(ack: LoginAck) -> list[str]:
    return [msgspec.json.decode(m, type=OneChat).msg for m in ack.offlinemsg]


async def test_offline_recipient_gets_everything_at_next_login_once(
    chat_cluster: ChatCluster,
) -> None:
    """Messages to an offline user come in order in the next login answer, and only there."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    texts = [f"message {i}" for i in range(5)]
    for text in texts:
        await a.send(OneChat(toid=bob, msg=text))
    await chat_cluster.settle()
    assert len(await chat_cluster.log_of(bob)) == 5

    b = node.connect()
    ack = await b.login(bob)
    assert _offline_texts(ack) == texts
    stored = [msgspec.json.decode(m, type=OneChat) for m in ack.offlinemsg]
    assert {(m.id, m.name, m.toid) for m in stored} == {(alice, "alice", bob)}
    assert all(m.mid for m in stored)
    raw = msgspec.json.decode(b.session.raw[0])
    assert all(isinstance(item, str) for item in raw["offlinemsg"])  # JSON texts, classic
    await b.close()  # the cursor is saved when the session ends

    again = await node.connect().login(bob)
    assert again.offlinemsg == []


async def test_log_beyond_one_batch_follows_the_login_answer(chat_cluster: ChatCluster) -> None:
    """Past ``offline_batch``, the rest come as pushes after the answer: in order, once each."""
    node = await chat_cluster.node(policy_with(offline_batch=3, read_batch=2))
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


async def test_push_during_login_waits_for_the_login_answer(chat_cluster: ChatCluster) -> None:
    """A message arriving while a login is in progress is sent right after the LoginAck, once."""
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
    # It was in the log when the login read it: in the answer, and never again.
    assert _offline_texts(ack) + _texts(b) == ["early"]


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


async def test_two_sessions_on_two_nodes_each_get_a_message_once(
    chat_cluster: ChatCluster,
) -> None:
    """Sessions of one user on two nodes each get every message exactly once."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    a = await first.login(alice)
    b1, b2 = await first.login(bob), await second.login(bob)
    for text in ("one", "two", "three"):
        await a.send(OneChat(toid=bob, msg=text))
    await chat_cluster.settle()
    assert _texts(b1) == _texts(b2) == ["one", "two", "three"]


async def test_outage_messages_reach_the_other_node_in_order_after_restore(
    chat_cluster: ChatCluster,
) -> None:
    """During a bus outage messages are in the log; the restore reads it, then live ones follow."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    a = await first.login(alice)
    b = await second.login(bob)
    await chat_cluster.outage()
    for i in range(3):
        await a.send(OneChat(toid=bob, msg=f"during {i}"))
    await chat_cluster.settle()
    assert _texts(b) == []
    await chat_cluster.restore()
    await a.send(OneChat(toid=bob, msg="after"))
    await chat_cluster.settle()
    assert _texts(b) == ["during 0", "during 1", "during 2", "after"]


async def test_a_live_message_after_a_gap_waits_for_the_gap(
    local_chat_cluster: ChatCluster,
) -> None:
    """An envelope that arrives after one was lost makes the feed read the gap first.

    The loss is injected into the in-process bus (a publish that fails while
    the subscriber never noticed); on Redis the cut and outage tests of
    tests/integration/test_delivery_log.py cover it.
    """
    chat_cluster = local_chat_cluster
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    a = await first.login(alice)
    b = await second.login(bob)
    await chat_cluster.outage()
    await a.send(OneChat(toid=bob, msg="lost on the bus"))
    await chat_cluster.settle()
    chat_cluster.hub.down = False  # back, but nobody noticed the outage
    await a.send(OneChat(toid=bob, msg="next"))
    await chat_cluster.settle()
    assert _texts(b) == ["lost on the bus", "next"]


async def test_a_stalled_reader_gets_everything_once_in_order_when_it_reads_again(
    chat_cluster: ChatCluster,
) -> None:
    """A session that stops reading is not cut: the log holds the rest until it reads again."""
    node = await chat_cluster.node(policy_with(read_batch=7))
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    b = await node.login(bob)
    await a.send(OneChat(toid=bob, msg="0"))
    await chat_cluster.settle()
    b.session.stall()
    for i in range(1, 50):
        await a.send(OneChat(toid=bob, msg=str(i)))
    await chat_cluster.settle()
    assert _texts(b) == ["0"]
    assert b.session.closed_reason is None
    b.session.stall(False)
    await until(lambda: len(_texts(b)) == 50, "the stalled reader never caught up")
    await chat_cluster.settle()
    assert _texts(b) == [str(i) for i in range(50)]


async def test_a_session_that_ends_behind_leaves_the_rest_for_the_next_login(
    chat_cluster: ChatCluster,
) -> None:
    """What a classic session was not handed when it ended comes at the next login, once."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    b = await node.login(bob)
    await a.send(OneChat(toid=bob, msg="had"))
    await chat_cluster.settle()
    b.session.stall()
    await a.send(OneChat(toid=bob, msg="not had"))
    await chat_cluster.settle()
    await b.close()
    ack = await node.connect().login(bob)
    assert _offline_texts(ack) == ["not had"]


async def test_device_resumes_after_its_last_ack(chat_cluster: ChatCluster) -> None:
    """An acknowledging device gets cursors, and a later session resumes after its last Ack."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    phone = node.connect()
    ack = await phone.login(bob, device="phone")
    assert ack.cursor == 0
    for i in range(4):
        await a.send(OneChat(toid=bob, msg=str(i)))
    await chat_cluster.settle()
    pushes = phone.session.of_type(OneChat)
    assert [(p.msg, p.cursor) for p in pushes] == [("0", 1), ("1", 2), ("2", 3), ("3", 4)]
    await phone.send(Ack(cursor=2))
    await phone.close()

    again = node.connect()
    ack = await again.login(bob, device="phone")
    await chat_cluster.settle()
    assert ack.cursor == 2
    assert ack.offlinemsg == []
    assert [(p.msg, p.cursor) for p in again.session.of_type(OneChat)] == [("2", 3), ("3", 4)]


async def test_ack_of_a_cursor_never_sent_is_refused(chat_cluster: ChatCluster) -> None:
    """Acknowledging past what was sent, or without a device, is an error and moves nothing."""
    node = await chat_cluster.node()
    bob = await node.register("bob")
    classic = await node.login(bob)
    await classic.send(Ack(cursor=0))
    phone = await node.login(bob, device="phone")
    await phone.send(Ack(cursor=5))
    for client in (classic, phone):
        [error] = client.session.of_type(Error)
        assert (error.errno, error.req) == (13, 130)


async def test_retry_with_the_same_cid_is_answered_with_the_original(
    chat_cluster: ChatCluster,
) -> None:
    """A client message id sent twice is stored and delivered once, and acked the same twice."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    a1 = await first.login(alice)
    b = await second.login(bob)
    await a1.send(OneChat(toid=bob, msg="once", cid="c-1", ref=1))
    a2 = await second.login(alice)  # the retry comes from another connection and node
    await a2.send(OneChat(toid=bob, msg="once", cid="c-1", ref=2))
    await chat_cluster.settle()
    [ack1] = a1.session.of_type(OneChatAck)
    [ack2] = a2.session.of_type(OneChatAck)
    assert ack1.errno == ack2.errno == 0
    assert (ack1.mid, ack1.seq, ack1.time) == (ack2.mid, ack2.seq, ack2.time)
    assert (ack1.ref, ack2.ref, ack2.cid) == (1, 2, "c-1")
    assert _texts(b) == ["once"]
    assert len(await chat_cluster.log_of(bob)) == 1


async def test_periodic_sweep_finds_an_entry_nobody_announced(
    local_chat_cluster: ChatCluster,
) -> None:
    """An entry in a user's log that no envelope announced reaches the user with the sweep.

    The lost announcement is injected into the in-process bus.
    """
    chat_cluster = local_chat_cluster
    first = await chat_cluster.node(policy_with(sweep_interval=0.05))
    second = await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    b = await first.login(bob)
    a = await second.login(alice)
    chat_cluster.hub.down = True
    await a.send(OneChat(toid=bob, msg="found by the sweep"))
    await second.service.ctx.writer.flush()
    chat_cluster.hub.down = False
    second.service.ctx.delivery._unsent.clear()  # as if the republish were lost too
    await until(lambda: "found by the sweep" in _texts(b), "the sweep never delivered it")
    assert _texts(b) == ["found by the sweep"]


async def test_after_beyond_the_log_is_clamped_to_its_end(chat_cluster: ChatCluster) -> None:
    """A device claiming more than the log holds resumes at the log's end, missing nothing new."""
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    await a.send(OneChat(toid=bob, msg="first"))
    await chat_cluster.settle()
    phone = node.connect()
    await phone.send(Login(id=bob, password=PASSWORD, device="phone", after=1000))
    [ack] = phone.session.of_type(LoginAck)
    assert ack.cursor == 1
    await a.send(OneChat(toid=bob, msg="second"))
    await chat_cluster.settle()
    assert [(p.msg, p.cursor) for p in phone.session.of_type(OneChat)] == [("second", 2)]


async def test_senders_wait_while_the_appends_in_flight_fill_their_bound(
    local_chat_cluster: ChatCluster,
) -> None:
    """Above ``max_pending`` bytes waiting for the log a send waits (back-pressure); none lost."""
    chat_cluster = local_chat_cluster
    node = await chat_cluster.node(policy_with(max_pending=2000))
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)
    b = await node.login(bob)
    gate = node.store.hold("append")
    service, text = node.service, "x" * 400
    for i in range(3):  # the first batch: held in the store
        assert service.handle(a.state, OneChat(toid=bob, msg=f"{i} {text}")) is None
    await gate.reached()
    queued = 0
    while not service.ctx.writer.full:  # fill the bound behind the held batch
        assert service.handle(a.state, OneChat(toid=bob, msg=f"{3 + queued} {text}")) is None
        queued += 1
    waiting = service.handle(a.state, OneChat(toid=bob, msg=f"{3 + queued} {text}"))
    assert waiting is not None  # the sender's connection stops here
    task = asyncio.create_task(waiting)
    for _ in range(20):  # many loop turns: it keeps waiting while the store holds the batch
        await asyncio.sleep(0)
    assert not task.done()
    gate.release()
    await task
    await chat_cluster.settle()
    got = [push.msg.split()[0] for push in b.session.of_type(OneChat)]
    assert got == [str(i) for i in range(4 + queued)]


async def test_an_acknowledged_chat_says_whether_its_recipient_was_online(
    chat_cluster: ChatCluster,
) -> None:
    """The answer to a one-to-one message says ``state``: "offline" when no node
    held a session of the recipient (it waits in the log), "online" when one
    did, here or on another node; a retry of a ``cid`` says nothing (it was
    not delivered again). Answers keep the order of their messages, group
    messages' among them, though a one-to-one answer waits for the bus."""
    first = await chat_cluster.node()
    second = await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    a = await first.login(alice)
    await a.send(CreateGroup(groupname="room", groupdesc=""))
    [created] = a.session.of_type(CreateGroupAck)
    assert created.groupid is not None

    await a.send(OneChat(toid=bob, msg="stored", ref=1))
    await chat_cluster.settle()
    b = await second.login(bob)
    await a.send(OneChat(toid=bob, msg="pushed", ref=2, cid="c-2"))
    await a.send(GroupChat(groupid=created.groupid, msg="to the room", ref=3))
    await a.send(OneChat(toid=alice, msg="to myself", ref=4))
    await a.send(OneChat(toid=bob, msg="pushed", ref=5, cid="c-2"))
    await chat_cluster.settle()

    answers = [
        (m.ref, m.errno, m.state if isinstance(m, OneChatAck) else "-")
        for m in a.session.received
        if isinstance(m, OneChatAck | GroupChatAck)
    ]
    assert answers == [
        (1, 0, "offline"),
        (2, 0, "online"),
        (3, 0, "-"),
        (4, 0, "online"),
        (5, 0, None),
    ]
    assert [push.msg for push in b.session.of_type(OneChat)] == ["pushed"]


async def test_without_an_answer_from_the_bus_the_answer_goes_without_state(
    local_chat_cluster: ChatCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed publish, or one the bus leaves unanswered (for
    ``sending.STATE_WAIT``): the answer comes without ``state`` (the message is in the log), and the
    answers after it wait for it, in order. The faults are injected into the
    in-process bus."""
    chat_cluster = local_chat_cluster
    node = await chat_cluster.node()
    alice = await node.register("alice")
    bob = await node.register("bob")
    a = await node.login(alice)

    chat_cluster.hub.down = True
    await a.send(OneChat(toid=bob, msg="bus down", ref=1))
    await node.service.ctx.writer.flush()
    chat_cluster.hub.down = False
    await until(lambda: len(a.session.of_type(OneChatAck)) == 1, "the first answer")

    unanswered: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    publish = node.bus.publish
    monkeypatch.setattr(
        node.bus,
        "publish",
        lambda channel, payload: (
            unanswered if channel.endswith(f":{bob}") else publish(channel, payload)
        ),
    )
    await a.send(OneChat(toid=bob, msg="bus silent", ref=2))
    await a.send(OneChat(toid=alice, msg="to myself", ref=3))
    await until(lambda: len(a.session.of_type(OneChatAck)) == 3, "all three answers")
    answers = [(ack.ref, ack.errno, ack.state) for ack in a.session.of_type(OneChatAck)]
    assert answers == [(1, 0, None), (2, 0, None), (3, 0, "online")]
    unanswered.set_result(1)  # the bus answers late: the answer was sent already
    await asyncio.sleep(0)
    assert len(a.session.of_type(OneChatAck)) == 3
    assert len(await chat_cluster.log_of(bob)) == 2
