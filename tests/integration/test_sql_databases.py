"""Two real nodes on one PostgreSQL or MariaDB database, joined by a real redis-server.

The servers are the session's private ones (tests/support/postgres.py,
tests/support/mariadb.py); each test gets a fresh database on them.
"""

import threading

import pytest
from sqlalchemy.engine import make_url

from tests.support.classic import (
    PASSWORD,
    ClassicClient,
    login,
    offline_texts,
    receive_texts,
    register,
    sync,
)
from tests.support.mariadb import MariaDBServer
from tests.support.node import NodeFactory, NodeHandle
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer

pytestmark = pytest.mark.integration

DATABASES = [pytest.param("postgres", id="postgresql"), pytest.param("mariadb", id="mariadb")]


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database on the session's PostgreSQL or MariaDB server."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def _two_nodes(node_factory: NodeFactory, redis: RedisServer, db_url: str) -> list[NodeHandle]:
    # One after the other: the first creates the schema (starting at once is
    # the migrations' business, issue 11 item 2).
    return [
        node_factory(db_url=db_url, extra_args=["--redis", redis.url, "--node-id", f"n{i}"])
        for i in (1, 2)
    ]


def _no_failed_appends(*nodes: NodeHandle) -> None:
    """No append failed and was retried by a node's LogWriter (a lock error, a duplicate key)."""
    for node in nodes:
        log = node.child.log_path.read_text()
        assert "messages failed (" not in log
        assert "Traceback" not in log


def test_users_on_two_nodes_chat_live_and_offline(
    node_factory: NodeFactory, redis_server: RedisServer, db_url: str
) -> None:
    """Chinese and emoji names and texts both ways, a group, and offline messages at next login."""
    n1, n2 = _two_nodes(node_factory, redis_server, db_url)
    alice, bob, carol = register(n1, "张伟", "Émile 🙂", "carol")
    a, _ = login(n1, alice)
    b, answer = login(n2, bob)
    assert answer["name"] == "Émile 🙂"
    a.send({"msgid": 6, "toid": bob, "msg": "你好 🌍"})
    b.send({"msgid": 6, "toid": alice, "msg": "bonjour 👋"})
    assert receive_texts(b, 1) == ["你好 🌍"]
    assert receive_texts(a, 1) == ["bonjour 👋"]
    group = a.request({"msgid": 8, "groupname": "茶🍵", "groupdesc": "绿茶"})["groupid"]
    assert b.request({"msgid": 9, "groupid": group})["errno"] == 0
    c, _ = login(n2, carol)
    assert c.request({"msgid": 9, "groupid": group})["errno"] == 0
    c.close()  # carol is offline from here on
    sent = [f"群 {i} 🎉" for i in range(10)]
    for text in sent:
        a.send({"msgid": 10, "groupid": group, "msg": text})
    for i in range(5):
        a.send({"msgid": 6, "toid": carol, "msg": f"私信 {i}"})
    sync(a)
    assert receive_texts(b, 10) == sent
    c, answer = login(n1, carol)  # the other node this time
    got = offline_texts(answer)
    got += receive_texts(c, 15 - len(got))
    assert got == [*sent, *(f"私信 {i}" for i in range(5))]
    sync(c)  # and nothing more
    for client in (a, b, c):
        client.close()
    _no_failed_appends(n1, n2)


def test_senders_on_both_nodes_append_for_one_user_at_once(
    node_factory: NodeFactory, redis_server: RedisServer, db_url: str
) -> None:
    """Two nodes append for the same offline user at once: each message once, in send order."""
    n1, n2 = _two_nodes(node_factory, redis_server, db_url)
    ann, ben, dan = register(n1, "ann", "ben", "dan")
    a, _ = login(n1, ann)
    b, _ = login(n2, ben)
    count = 200

    def send(client: ClassicClient, tag: str) -> None:
        for i in range(count):
            client.send({"msgid": 6, "toid": dan, "msg": f"{tag}{i}"})
        sync(client)

    senders = [threading.Thread(target=send, args=pair) for pair in ((a, "a"), (b, "b"))]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    d = ClassicClient(n2.host, n2.port)
    answer = d.request({"msgid": 1, "id": dan, "password": PASSWORD})
    assert answer["errno"] == 0
    got = offline_texts(answer)
    got += receive_texts(d, 2 * count - len(got))
    assert sorted(got) == sorted(f"{tag}{i}" for tag in "ab" for i in range(count))
    for tag in "ab":  # per sender, the log's order is the send order
        assert [t for t in got if t[0] == tag] == [f"{tag}{i}" for i in range(count)]
    sync(d)
    for client in (a, b, d):
        client.close()
    _no_failed_appends(n1, n2)


@pytest.mark.parametrize("kind", ["postgres", "mariadb"], ids=["postgresql", "mariadb"])
def test_a_node_keeps_db_pool_size_connections(
    node_factory: NodeFactory, request: pytest.FixtureRequest, kind: str
) -> None:
    """CLUSTERCHAT_DB_POOL_SIZE=2: 30 registrations at once use two connections, no more."""
    server: PostgresServer | MariaDBServer = request.getfixturevalue(f"{kind}_server")
    url = server.create_database()
    database = make_url(url).database
    node = node_factory(db_url=url, env={"CLUSTERCHAT_DB_POOL_SIZE": "2"})
    registrations = [threading.Thread(target=register, args=(node, f"user{i}")) for i in range(30)]
    for thread in registrations:
        thread.start()
    for thread in registrations:
        thread.join()
    if isinstance(server, PostgresServer):
        count = server.sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'")
    else:
        count = server.sql(
            f"SELECT count(*) FROM information_schema.processlist WHERE db = '{database}'"
        )
    assert int(count) == 2
    _no_failed_appends(node)
