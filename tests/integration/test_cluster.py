"""Real nodes joined by a real redis-server, some behind a real nginx (the cluster issue).

Each test that stores messages runs three times: on SQLite (one file beside
the nodes), and on a fresh database of the session's PostgreSQL and MariaDB
servers (``cluster_db``).
"""

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.support.classic import (
    PASSWORD,
    ClassicClient,
    login,
    offline_texts,
    receive_texts,
    register,
    sync,
)
from tests.support.nginx import NginxFactory
from tests.support.node import NodeFactory, NodeHandle
from tests.support.redis import RedisServer
from tests.support.timing import seconds

pytestmark = pytest.mark.integration


@pytest.fixture(
    params=[
        pytest.param(None, id="sqlite"),
        pytest.param("postgres", id="postgresql"),
        pytest.param("mariadb", id="mariadb"),
    ]
)
def cluster_db(request: pytest.FixtureRequest) -> str | None:
    """The cluster's database URL: None for node_factory's SQLite file, or a fresh
    database on the session's PostgreSQL or MariaDB server."""
    if request.param is None:
        return None
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def _cluster(
    node_factory: NodeFactory, redis: RedisServer, count: int, db_url: str | None
) -> list[NodeHandle]:
    # One after the other: the first creates the schema.
    return [
        node_factory(db_url=db_url, extra_args=["--redis", redis.url, "--node-id", f"n{i}"])
        for i in range(1, count + 1)
    ]


def test_users_on_two_nodes_chat_both_ways(
    node_factory: NodeFactory, redis_server: RedisServer, cluster_db: str | None
) -> None:
    """Alice on node 1 and bob on node 2 exchange messages through Redis."""
    n1, n2 = _cluster(node_factory, redis_server, 2, cluster_db)
    alice, bob = register(n1, "alice", "bob")
    a, _ = login(n1, alice)
    b, _ = login(n2, bob)
    for i in range(20):
        a.send({"msgid": 6, "toid": bob, "msg": f"a{i}"})
        b.send({"msgid": 6, "toid": alice, "msg": f"b{i}"})
    assert receive_texts(b, 20) == [f"a{i}" for i in range(20)]
    assert receive_texts(a, 20) == [f"b{i}" for i in range(20)]
    a.close()
    b.close()


def test_user_on_two_nodes_gets_each_message_once_per_session(
    node_factory: NodeFactory, redis_server: RedisServer, cluster_db: str | None
) -> None:
    """Bob's phone (node 1) and laptop (node 2) each get every message exactly once."""
    n1, n2 = _cluster(node_factory, redis_server, 2, cluster_db)
    alice, bob = register(n1, "alice", "bob")
    a, _ = login(n1, alice)
    phone, _ = login(n1, bob)
    laptop, _ = login(n2, bob)
    for i in range(30):
        a.send({"msgid": 6, "toid": bob, "msg": f"m{i}"})
    sync(a)
    expected = [f"m{i}" for i in range(30)]
    assert receive_texts(phone, 30) == expected
    assert receive_texts(laptop, 30) == expected
    # Nothing more is pending for either (no duplicates).
    sync(phone)
    sync(laptop)
    for client in (a, phone, laptop):
        client.close()


def test_group_chat_reaches_members_on_every_node_and_offline_ones_later(
    node_factory: NodeFactory, redis_server: RedisServer, cluster_db: str | None
) -> None:
    """A group spread over three nodes: online members live, offline member at next login."""
    n1, n2, n3 = _cluster(node_factory, redis_server, 3, cluster_db)
    ann, ben, cat, dan = register(n1, "ann", "ben", "cat", "dan")
    a, _ = login(n1, ann)
    group = a.request({"msgid": 8, "groupname": "tea", "groupdesc": "tea lovers"})["groupid"]
    b, _ = login(n2, ben)
    c, _ = login(n3, cat)
    d, _ = login(n3, dan)
    for client in (b, c, d):
        assert client.request({"msgid": 9, "groupid": group})["errno"] == 0
    d.send({"msgid": 3})
    assert d.receive()["msgid"] == 103
    for i in range(10):
        a.send({"msgid": 10, "groupid": group, "msg": f"g{i}"})
    expected = [f"g{i}" for i in range(10)]
    assert receive_texts(b, 10) == expected
    assert receive_texts(c, 10) == expected
    relogin = d.request({"msgid": 1, "id": dan, "password": PASSWORD})
    got = offline_texts(relogin)
    got += receive_texts(d, 10 - len(got))
    assert got == expected
    # Ben posts from node 2: ann (node 1) gets it, ben does not get his own.
    b.send({"msgid": 10, "groupid": group, "msg": "from ben"})
    assert receive_texts(a, 1) == ["from ben"]
    sync(b)
    for client in (a, b, c, d):
        client.close()


def test_clients_through_nginx_land_on_different_nodes(
    node_factory: NodeFactory,
    redis_server: RedisServer,
    nginx_factory: NginxFactory,
    cluster_db: str | None,
) -> None:
    """nginx spreads logins over both nodes, and they chat with each other."""
    nodes = _cluster(node_factory, redis_server, 2, cluster_db)
    front = nginx_factory([(n.host, n.port) for n in nodes])
    names = [f"u{i}" for i in range(6)]
    ids = register(nodes[0], *names)
    clients = []
    for user_id in ids:
        client = ClassicClient("127.0.0.1", front.port)
        assert client.request({"msgid": 1, "id": user_id, "password": PASSWORD})["errno"] == 0
        clients.append(client)
    placed: Counter[int] = Counter()
    for node in nodes:
        log = node.child.log_path.read_text()
        placed[node.port] = sum(f"user {uid} logged in" in log for uid in ids)
    assert sorted(placed.values()) == [3, 3]
    for i, client in enumerate(clients):
        client.send({"msgid": 6, "toid": ids[(i + 1) % 6], "msg": f"ring {i}"})
    for i, client in enumerate(clients):
        assert receive_texts(client, 1) == [f"ring {(i - 1) % 6}"]
    for client in clients:
        client.close()


def test_node_killed_messages_wait_for_nextlogin(
    node_factory: NodeFactory, redis_server: RedisServer, cluster_db: str | None
) -> None:
    """SIGKILL bob's node: what alice sends meanwhile reaches bob at next login, exactly once.

    "before" was handed to bob's kernel just before the kill, maybe before the
    node saved bob's classic cursor: docs/delivery.md (crash window) allows
    the next session to show it once more, first; nothing else may repeat.
    """
    n1, n2 = _cluster(node_factory, redis_server, 2, cluster_db)
    alice, bob = register(n1, "alice", "bob")
    a, _ = login(n1, alice)
    b, _ = login(n2, bob)
    a.send({"msgid": 6, "toid": bob, "msg": "before"})
    assert receive_texts(b, 1) == ["before"]
    n2.stop(signal.SIGKILL)
    assert b.closed_by_server()
    b.close()
    sent = [f"while dead {i}" for i in range(50)]
    for text in sent:
        a.send({"msgid": 6, "toid": bob, "msg": text})
    sync(a)
    # Bob logs in again at once, through the surviving node.
    b2, answer = login(n1, bob)
    got = offline_texts(answer)
    if got[:1] == ["before"]:
        got = got[1:]
    while len(got) < len(sent):
        got += receive_texts(b2, 1)
    assert got == sent
    sync(b2)  # and nothing more arrives
    a.close()
    b2.close()


def test_redis_outage_loses_nothing(
    node_factory: NodeFactory, redis_server: RedisServer, cluster_db: str | None
) -> None:
    """Redis stops: local chat goes on; cross-node messages arrive once it is back."""
    n1, n2 = _cluster(node_factory, redis_server, 2, cluster_db)
    alice, carol, bob = register(n1, "alice", "carol", "bob")
    a, _ = login(n1, alice)
    c, _ = login(n1, carol)
    b, _ = login(n2, bob)
    a.send({"msgid": 6, "toid": bob, "msg": "warm-up"})
    assert receive_texts(b, 1) == ["warm-up"]

    redis_server.stop()
    cross = [f"outage {i}" for i in range(40)]
    for text in cross:
        a.send({"msgid": 6, "toid": bob, "msg": text})
    a.send({"msgid": 6, "toid": carol, "msg": "local during outage"})
    assert receive_texts(c, 1) == ["local during outage"]
    sync(a)

    redis_server.start()
    b.sock.settimeout(seconds(30))
    assert receive_texts(b, len(cross)) == cross
    # Presence recovers: bob reads online again in alice's friend list (once
    # they are friends: alice asks, bob is pushed the request and asks back).
    assert a.request({"msgid": 7, "friendid": bob}) == {
        "errno": 0,
        "friendid": bob,
        "msgid": 107,
        "pending": True,
    }
    assert b.receive() == {"id": alice, "msgid": 140, "name": "alice"}
    assert b.request({"msgid": 7, "friendid": alice})["errno"] == 0
    deadline = time.monotonic() + seconds(15)
    while True:
        again, answer = login(n1, alice)
        again.close()
        states = {json.loads(t)["id"]: json.loads(t)["state"] for t in answer["friends"]}
        if states.get(bob) == "online":
            break
        assert time.monotonic() < deadline, "bob never came back online in presence"
        time.sleep(0.2)
    sync(b)
    for client in (a, b, c):
        client.close()


def test_sigterm_on_a_node_moves_its_clients_without_loss(
    node_factory: NodeFactory,
    redis_server: RedisServer,
    nginx_factory: NginxFactory,
    cluster_db: str | None,
) -> None:
    """A node stopped with SIGTERM: its clients reconnect through nginx and lose nothing."""
    nodes = _cluster(node_factory, redis_server, 2, cluster_db)
    front = nginx_factory([(n.host, n.port) for n in nodes])
    alice, bob = register(nodes[0], "alice", "bob")
    a = ClassicClient("127.0.0.1", front.port)
    assert a.request({"msgid": 1, "id": alice, "password": PASSWORD})["errno"] == 0
    b = ClassicClient("127.0.0.1", front.port)
    assert b.request({"msgid": 1, "id": bob, "password": PASSWORD})["errno"] == 0
    bobs_node = next(n for n in nodes if f"user {bob} logged in" in n.child.log_path.read_text())
    assert f"user {alice} logged in" not in bobs_node.child.log_path.read_text()

    assert bobs_node.stop(signal.SIGTERM) == 0
    assert b.closed_by_server()
    b.close()
    sent = [f"during the move {i}" for i in range(25)]
    for text in sent:
        a.send({"msgid": 6, "toid": bob, "msg": text})
    sync(a)
    b2 = ClassicClient("127.0.0.1", front.port)  # nginx skips the stopped node
    answer = b2.request({"msgid": 1, "id": bob, "password": PASSWORD})
    assert answer["errno"] == 0
    got = offline_texts(answer)
    got += receive_texts(b2, len(sent) - len(got))
    assert got == sent
    sync(b2)
    a.close()
    b2.close()


def test_status_lists_live_nodes_and_their_users(
    node_factory: NodeFactory, redis_server: RedisServer
) -> None:
    """`clusterchat status` shows each live node with its online users."""
    n1, n2 = _cluster(node_factory, redis_server, 2, None)  # presence only: any database
    alice, bob = register(n1, "alice", "bob")
    a, _ = login(n1, alice)
    b, _ = login(n2, bob)
    deadline = time.monotonic() + seconds(15)
    while True:
        result = subprocess.run(
            [sys.executable, "-m", "clusterchat", "status", "--redis", redis_server.url],
            capture_output=True,
            text=True,
            timeout=seconds(30),
            check=True,
        )
        lines = result.stdout.splitlines()
        if f"    online: {alice}" in lines and f"    online: {bob}" in lines:
            break
        assert time.monotonic() < deadline, result.stdout
        time.sleep(0.2)
    assert any(line.startswith("n1 ") for line in lines)
    assert any(line.startswith("n2 ") for line in lines)
    assert "2 live node(s), 2 online user(s)" in lines
    # The column says what it counts: users online on the node (each once).
    assert lines[0].split()[-2:] == ["users", "online"]
    assert any(line.startswith("n1 ") and line.split()[-1] == "1" for line in lines)
    a.close()
    b.close()
