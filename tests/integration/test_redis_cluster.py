"""Real nodes joined by a real Redis Cluster (3 primaries, 3 replicas): issue 11, item 4.

The nodes are started with ``--redis redis+cluster://...`` (every cluster node
as a seed), so their bus is RedisClusterBus (sharded pub/sub) and their
presence talks to the primary of its slot. Users 1..8 of a fresh database have
their channels (``{user:<id>}``) on all three shards (slots 10778, 6777, 2648,
15039, ...); each test checks that the users it relies on span shards.
"""

import asyncio
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from clusterchat.bus.slots import slot_of
from clusterchat.cluster.node_command import node_argv
from tests.support.classic import PASSWORD, ClassicClient, login, register
from tests.support.node import NodeFactory, NodeHandle
from tests.support.redis_cluster import RedisCluster
from tests.support.timing import seconds
from tests.support.wire import LOAD_ENV, Net, first_difference, keys, session_problems, tally

pytestmark = pytest.mark.integration

#: The periodic sweep (a last resort that reads every user's log) is pushed out of
#: the tests' reach: what arrives must come through the bus or its restore.
NO_SWEEP: Mapping[str, str] = {"CLUSTERCHAT_SWEEP_INTERVAL": "3600"}


def _nodes(
    node_factory: NodeFactory, cluster: RedisCluster, count: int, env: Mapping[str, str] = {}
) -> list[NodeHandle]:
    return [
        node_factory(
            extra_args=["--redis", cluster.url, "--node-id", f"n{i}"],
            env={**LOAD_ENV, **NO_SWEEP, **env},
        )
        for i in range(1, count + 1)
    ]


def _shards(cluster: RedisCluster, users: Sequence[int]) -> set[int]:
    """The ports of the primaries serving these users' channels."""
    return {cluster.owner(slot_of(f"user:{user}")).port for user in users}


def _texts(client: ClassicClient, count: int) -> list[str]:
    texts: list[str] = []
    while len(texts) < count:
        message = client.receive()
        assert message["msgid"] in (6, 10), message
        texts.append(message["msg"])
    return texts


def _sync(client: ClassicClient) -> None:
    assert client.request({"msgid": 120, "ref": 99})["msgid"] == 121


def test_users_on_every_shard_chat_one_to_one_and_in_a_group(
    node_factory: NodeFactory, shared_redis_cluster: RedisCluster
) -> None:
    """Six users on two nodes, channels on all 3 shards: one-to-one and group, once, in order."""
    cluster = shared_redis_cluster
    n1, n2 = _nodes(node_factory, cluster, 2)
    ids = register(n1, *(f"u{i}" for i in range(6)))
    assert len(_shards(cluster, ids)) == 3
    clients = [login(n1 if i % 2 == 0 else n2, uid)[0] for i, uid in enumerate(ids)]

    # One-to-one: each user writes 20 messages to the next one (always on the other node).
    for i, client in enumerate(clients):
        for k in range(20):
            client.send({"msgid": 6, "toid": ids[(i + 1) % 6], "msg": f"{i}:{k}"})
    for i, client in enumerate(clients):
        sender = (i - 1) % 6
        assert _texts(client, 20) == [f"{sender}:{k}" for k in range(20)]

    # A group of all six: every member but the sender gets each message once, in order.
    group = clients[0].request({"msgid": 8, "groupname": "all", "groupdesc": "shards"})["groupid"]
    for client in clients[1:]:
        assert client.request({"msgid": 9, "groupid": group})["errno"] == 0
    for k in range(15):
        clients[1].send({"msgid": 10, "groupid": group, "msg": f"g{k}"})
    for i, client in enumerate(clients):
        if i != 1:
            assert _texts(client, 15) == [f"g{k}" for k in range(15)]
    for client in clients:
        _sync(client)  # and nothing more: no duplicate was waiting
        client.close()


def test_offline_user_on_another_shard_gets_messages_at_next_login(
    node_factory: NodeFactory, shared_redis_cluster: RedisCluster
) -> None:
    """Messages to a logged-out user wait in the log; the next login on the other node has them."""
    n1, n2 = _nodes(node_factory, shared_redis_cluster, 2)
    alice, bob = register(n1, "alice", "bob")
    a, _ = login(n1, alice)
    for k in range(10):
        a.send({"msgid": 6, "toid": bob, "msg": f"m{k}"})
    _sync(a)
    b = ClassicClient(n2.host, n2.port)
    answer = b.request({"msgid": 1, "id": bob, "password": PASSWORD})
    assert answer["errno"] == 0
    got = [json.loads(text)["msg"] for text in answer.get("offlinemsg", [])]
    got += _texts(b, 10 - len(got))
    assert got == [f"m{k}" for k in range(10)]
    a.close()
    b.close()


def test_an_acknowledged_message_says_whether_its_recipient_is_online_through_the_cluster(
    node_factory: NodeFactory, shared_redis_cluster: RedisCluster
) -> None:
    """The answer's ``state`` comes from SPUBLISH's count of the shard's
    subscribers: "offline" before the recipient logs in on the other node,
    "online" after."""
    n1, n2 = _nodes(node_factory, shared_redis_cluster, 2)
    alice, bob = register(n1, "alice", "bob")
    a, _ = login(n1, alice)
    before = a.request({"msgid": 6, "toid": bob, "msg": "later", "ref": 1})
    b, _ = login(n2, bob)
    after = a.request({"msgid": 6, "toid": bob, "msg": "now", "ref": 2})
    assert [(m["msgid"], m["errno"], m["ref"], m.get("state")) for m in (before, after)] == [
        (106, 0, 1, "offline"),
        (106, 0, 2, "online"),
    ]
    assert _texts(b, 1) == ["now"]
    a.close()
    b.close()


async def test_primary_sigkilled_while_users_chat_loses_no_acknowledged_message(
    node_factory: NodeFactory, redis_cluster: RedisCluster, net: Net
) -> None:
    """A primary SIGKILLed mid-stream: its replica takes over, both nodes follow, and every
    acknowledged one-to-one and group message reaches each recipient once, in order
    (no sweep to help)."""
    cluster = redis_cluster
    n1, n2 = await asyncio.to_thread(_nodes, node_factory, cluster, 2)
    ids = await net.register(n1, *(f"u{i}" for i in range(6)))
    assert len(await asyncio.to_thread(_shards, cluster, ids)) == 3
    nodes = [n1, n2]
    # u_i on node i % 2 writes to u_(i+1): always a user on the other node.
    receivers = [await net.login(nodes[i % 2], uid, device=f"dev-{i}") for i, uid in enumerate(ids)]
    senders = [await net.login(nodes[i % 2], uid) for i, uid in enumerate(ids)]
    # And a group of all six, posted to by a seventh user, one message per ack.
    (poster_id,) = await net.register(n1, "poster")
    poster = await net.login(n1, poster_id)
    group = (await poster.request({"msgid": 8, "groupname": "all", "groupdesc": "failover"}))[
        "groupid"
    ]
    for receiver in receivers:
        assert (await receiver.request({"msgid": 9, "groupid": group}))["errno"] == 0
    group_plan = keys("g", 150)

    async def post_to_group() -> None:
        for key in group_plan:
            ack = await poster.chat(group, f"{key}|", group=True)
            assert ack.get("errno") == 0, ack
            await asyncio.sleep(0.02)

    plans = [keys(f"u{i}", 800) for i in range(6)]  # at least 6 s of traffic
    streams = [
        net.spawn(sender.stream(ids[(i + 1) % 6], plans[i], batch=4, pause=0.03))
        for i, sender in enumerate(senders)
    ]
    streams.append(net.spawn(post_to_group()))
    victim = await asyncio.to_thread(cluster.owner, slot_of(f"user:{ids[1]}"))
    replica = await asyncio.to_thread(cluster.replica_of, victim)
    await receivers[1].until(lambda: len(receivers[1].keys) >= 60, "60 messages before the kill")
    await asyncio.to_thread(cluster.kill, victim)
    assert not all(stream.done() for stream in streams), "the traffic ended before the kill"
    await asyncio.gather(*streams)
    for sender in senders:
        await sender.until_acked()

    def promoted() -> bool:
        return replica.info("replication").get("role") == "master"

    assert await asyncio.to_thread(promoted), "the replica did not take over"
    for i, receiver in enumerate(receivers):
        sender = senders[(i - 1) % 6]
        accepted = sender.accepted()
        assert accepted == plans[(i - 1) % 6], sender.refused()[:3]
        wanted = set(accepted) | set(group_plan)
        await receiver.receive_keys(lambda: wanted, within=seconds(30))  # noqa: B023
        got = [key for key in receiver.keys if not key.startswith("g:")]
        assert got == accepted, (
            f"receiver {i}: {tally(got, accepted)}; {first_difference(got, accepted)}"
        )
        in_group = [key for key in receiver.keys if key.startswith("g:")]
        assert in_group == group_plan, (
            f"receiver {i}, group: {tally(in_group, group_plan)};"
            f" {first_difference(in_group, group_plan)}"
        )
        assert session_problems(receiver) == []
    for node in nodes:  # the nodes followed the failover (and did not just sweep)
        log = node.child.log_path.read_text()
        assert "bus: reconnected to 3 primaries" in log, node.child.name


async def test_node_status_reads_presence_through_the_cluster(
    node_factory: NodeFactory, shared_redis_cluster: RedisCluster, net: Net
) -> None:
    """`clusterchat status --redis redis+cluster://...` lists both nodes and their users."""
    cluster = shared_redis_cluster
    n1, n2 = await asyncio.to_thread(
        _nodes, node_factory, cluster, 2, {"CLUSTERCHAT_PREFIX": "statustest"}
    )
    alice, bob = await net.register(n1, "alice", "bob")
    await net.login(n1, alice)
    await net.login(n2, bob)
    argv = ["-m", "clusterchat", "status", "--redis", cluster.url, "--prefix", "statustest"]
    lines: list[str] = []
    async with asyncio.timeout(seconds(20)):
        while True:
            process = await asyncio.create_subprocess_exec(
                sys.executable, *argv, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await process.communicate()
            lines = out.decode().splitlines()
            if f"    online: {alice}" in lines and f"    online: {bob}" in lines:
                break
            await asyncio.sleep(0.2)
    assert "2 live node(s), 2 online user(s)" in lines


def test_a_cluster_url_without_a_seed_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """`--redis redis+cluster://h` (no port): exit 2 naming the problem, nothing opened."""
    db = f"sqlite:///{tmp_path / 'x.db'}"
    result = subprocess.run(
        node_argv(0, db_url=db, redis_url="redis+cluster://h"),
        capture_output=True,
        text=True,
        timeout=seconds(30),
        check=False,
    )
    assert result.returncode == 2
    assert "cluster seed 'h' is not host:port" in result.stderr
    assert not (tmp_path / "x.db").exists()
