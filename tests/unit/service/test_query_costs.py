"""Chat costs no database query per message (docs/architecture.md, groups.py, users_cache.py).

The only store calls on the chat path are batched writes: the log's append
(group commit, at most one per batch) and the cursor saves (at most one per
node every ``cursor_interval``); no lookup per message. The store is
the real SqlStore behind ``InstrumentedStore``, which counts the calls that
reach it.
"""

from clusterchat.protocol import AddGroup, CreateGroup, CreateGroupAck, GroupChat, OneChat
from tests.support.service import ChatCluster


async def test_chat_to_a_known_online_user_costs_no_store_call(chat_cluster: ChatCluster) -> None:
    """Once the recipient is known, N one-to-one messages make no store call but appends."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await second.register("bob")
    carol = await first.register("carol")
    a = await first.login(alice)
    b, c = await second.login(bob), await first.login(carol)
    await a.send(OneChat(toid=bob, msg="warm-up"))  # bob registered elsewhere: one lookup
    await chat_cluster.settle()
    before = [first.store.total, second.store.total]
    before_saves = [node.store.calls["save_cursors"] for node in (first, second)]

    count = 50
    for i in range(count):
        await a.send(OneChat(toid=bob, msg=f"remote {i}"))
        await a.send(OneChat(toid=carol, msg=f"local {i}"))
    await chat_cluster.settle()

    appends = first.store.calls["append"]
    saves = [node.store.calls["save_cursors"] for node in (first, second)]
    assert [first.store.total - appends - saves[0], second.store.total - saves[1]] == [
        before[0] - 1 - before_saves[0],
        before[1] - before_saves[1],
    ]
    assert 1 <= appends - 1 <= 2 * count
    assert len(b.session.of_type(OneChat)) == count + 1
    assert len(c.session.of_type(OneChat)) == count


async def test_group_chat_to_a_cached_group_costs_no_store_call(
    chat_cluster: ChatCluster,
) -> None:
    """After the first message loads the members, M group messages cost only appends."""
    first, second = await chat_cluster.node(), await chat_cluster.node()
    alice = await first.register("alice")
    bob = await first.register("bob")
    carol = await first.register("carol")
    a, b, c = await first.login(alice), await first.login(bob), await second.login(carol)
    await a.send(CreateGroup(groupname="team"))
    group = a.session.of_type(CreateGroupAck)[-1].groupid
    assert group is not None
    await b.send(AddGroup(groupid=group))
    await c.send(AddGroup(groupid=group))
    await chat_cluster.settle()
    loads = first.store.calls["members"]  # a join reads them too (the group size limit)
    await a.send(GroupChat(groupid=group, msg="warm-up"))
    await chat_cluster.settle()
    assert first.store.calls["members"] == loads + 1
    before = [first.store.total, second.store.total]
    before_saves = [node.store.calls["save_cursors"] for node in (first, second)]

    count = 50
    for i in range(count):
        await a.send(GroupChat(groupid=group, msg=f"group {i}"))
    await chat_cluster.settle()

    appends = first.store.calls["append"] - 1
    saves = [
        node.store.calls["save_cursors"] - b
        for node, b in zip((first, second), before_saves, strict=True)
    ]
    assert [first.store.total - appends - saves[0], second.store.total - saves[1]] == before
    assert 1 <= appends <= count
    assert len(b.session.of_type(GroupChat)) == len(c.session.of_type(GroupChat)) == count + 1
