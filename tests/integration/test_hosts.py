"""A cluster on three hosts made of network namespaces (issue 11, several hosts).

The data host runs Redis and the database (PostgreSQL, then MariaDB), each
node host runs one ``clusterchat node``, and the test's users connect from a
fourth, client, namespace (tests/support/netns.py draws the network). Nothing
listens on loopback across hosts: the nodes reach Redis and the database at
the data host's address, as they would on separate machines.

The users chat one-to-one and in a group, live and offline, and read each
other's presence across the hosts; then one node host's backend link is cut
(``ip link set back down``) and restored: that node reconnects to Redis and
its user gets, from the log, every message acknowledged meanwhile. Each test
runs on PostgreSQL and on MariaDB (about 25 s each way on two cores).

Needs root (``ip netns``); skipped, with ``ip``'s error, only where the first
namespace cannot be made. Every process is stopped by pid and every
namespace deleted at teardown, on failure too.
"""

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clusterchat.cluster import processes
from clusterchat.cluster.node_command import NODE_READY, node_argv
from clusterchat.cluster.redis import redis_argv
from tests.support.classic import PASSWORD, ClassicClient, offline_texts, receive_texts, sync
from tests.support.database import migrated
from tests.support.db_server import DatabaseServer
from tests.support.mariadb import start_mariadb
from tests.support.netns import BACKEND, Host, Hosts, NamespacesUnavailable, NamespaceThread
from tests.support.node import TEST_NODE_ENV, NodeHandle
from tests.support.postgres import private_dir, start_postgres
from tests.support.processes import assert_stopped
from tests.support.timing import seconds

pytestmark = pytest.mark.integration

#: Inside a namespace every port is free but ours: fixed ports are safe.
_REDIS_PORT = 6379
_NODE_PORT = 6000


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    """The namespaces and their LANs; deleted at the end, whatever happened."""
    try:
        made = Hosts.build()
    except NamespacesUnavailable as exc:
        pytest.skip(f"cannot create network namespaces here: {exc}")
    try:
        yield made
    finally:
        made.close()


@dataclass
class DataHost:
    """What runs on the data host."""

    redis_url: str
    database: DatabaseServer


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def data_host(
    request: pytest.FixtureRequest, hosts: Hosts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DataHost]:
    """Redis and one database server on the data host, listening on its backend address."""
    address = hosts.data.back
    assert address is not None
    base = tmp_path_factory.mktemp("data-host")
    password = secrets.token_hex(16)
    # At notice level Redis says when it accepts (the test cannot connect from here).
    notice = ("--loglevel", "notice")
    argv = redis_argv(_REDIS_PORT, base, host=address, password=password, extra=notice)
    redis = processes.spawn("redis", hosts.data.argv(argv), log_path=base / "redis.log")
    pg_dir: Path | None = None
    database: DatabaseServer | None = None
    try:
        processes.wait_for_log(redis, "Ready to accept connections", seconds(10))
        if request.param == "postgresql":
            pg_dir = private_dir()
            database = start_postgres(
                pg_dir, host=address, clients=BACKEND, prefix=hosts.data.prefix
            )
        else:
            database = start_mariadb(
                base / "mariadb", host=address, clients=BACKEND, prefix=hosts.data.prefix
            )
        yield DataHost(f"redis://:{password}@{address}:{_REDIS_PORT}/0", database)
    finally:
        try:
            if database is not None:
                database.stop()
        finally:
            processes.stop(redis, timeout=seconds(10))
            if pg_dir is not None:
                shutil.rmtree(pg_dir, ignore_errors=True)
        assert_stopped(redis)
        if database is not None:
            assert_stopped(database.child)


@dataclass
class Cluster:
    """Two nodes on two hosts, and the client host's sockets."""

    hosts: Hosts
    nodes: tuple[NodeHandle, NodeHandle]
    clients: NamespaceThread

    def connect(self, node: NodeHandle) -> ClassicClient:
        """A classic client on the client host, connected to ``node``."""
        return ClassicClient.over(self.clients.connect((node.host, node.port), seconds(10)))

    def login(self, node: NodeHandle, user_id: int) -> tuple[ClassicClient, dict[str, Any]]:
        """A client logged in as ``user_id`` on ``node``, and the login answer."""
        client = self.connect(node)
        answer = client.request({"msgid": 1, "id": user_id, "password": PASSWORD})
        assert answer["errno"] == 0, answer
        return client, answer

    def register(self, *names: str) -> list[int]:
        """Register ``names`` (through node 1); their ids in order."""
        client = self.connect(self.nodes[0])
        try:
            answers = [client.request({"msgid": 4, "name": n, "password": PASSWORD}) for n in names]
        finally:
            client.close()
        assert all(a["errno"] == 0 for a in answers), answers
        return [int(a["id"]) for a in answers]


def _start_node(host: Host, number: int, db_url: str, redis_url: str, log: Path) -> NodeHandle:
    assert host.front is not None
    argv = node_argv(
        _NODE_PORT, db_url=db_url, redis_url=redis_url, node_id=f"h{number}", host=host.front
    )
    env = {**os.environ, **TEST_NODE_ENV}
    child = processes.spawn(f"node-{number}", host.argv(argv), log_path=log, env=env)
    try:
        processes.wait_for_log(child, f"{NODE_READY} {host.front}:{_NODE_PORT}", seconds(30))
    except BaseException:
        processes.stop(child, timeout=seconds(10))
        raise
    return NodeHandle(host.front, _NODE_PORT, child, env=env)


@pytest.fixture
def cluster(hosts: Hosts, data_host: DataHost, tmp_path: Path) -> Iterator[Cluster]:
    """A fresh database, upgraded from a node host, and a node on each node host."""
    url = migrated(data_host.database.create_database(), prefix=hosts.node1.prefix)
    started: list[NodeHandle] = []
    clients = NamespaceThread(hosts.client)
    try:
        for number, host in enumerate((hosts.node1, hosts.node2), start=1):
            log = tmp_path / f"node-{number}.log"
            started.append(_start_node(host, number, url, data_host.redis_url, log))
        yield Cluster(hosts, (started[0], started[1]), clients)
    finally:
        clients.close()
        for handle in started:
            with contextlib.suppress(Exception):  # each one is checked below
                handle.stop()
        for handle in started:
            assert_stopped(handle.child)


def _states(answer: dict[str, Any]) -> dict[int, str]:
    return {json.loads(t)["id"]: json.loads(t)["state"] for t in answer.get("friends", [])}


def _wait_for_state(cluster: Cluster, user_id: int, friend: int, state: str) -> None:
    """Log in as ``user_id`` on node 1 until ``friend`` reads ``state`` (bounded)."""
    deadline = time.monotonic() + seconds(20)
    while True:
        client, answer = cluster.login(cluster.nodes[0], user_id)
        client.close()
        if _states(answer).get(friend) == state:
            return
        assert time.monotonic() < deadline, f"{friend} never read {state}: {answer}"
        time.sleep(0.2)


def _send_acknowledged(client: ClassicClient, requests: list[dict[str, Any]]) -> None:
    """Send chat requests with a ``ref`` each; return once all are acknowledged (in the log)."""
    for ref, request in enumerate(requests, start=1):
        client.send({**request, "ref": ref})
    answers = [client.receive() for _ in requests]
    assert all(a["msgid"] in (106, 110) and a["errno"] == 0 for a in answers), answers
    assert sorted(a["ref"] for a in answers) == list(range(1, len(requests) + 1)), answers


def _stored_texts(client: ClassicClient, answer: dict[str, Any], count: int) -> list[str]:
    """The ``count`` stored messages a login brings: in its answer, then as pushes.

    The answer carries what fits in the classic client's 1024-byte frame
    (docs/protocol.md, Output); the rest follow at once. At least one fits.
    """
    got = offline_texts(answer)
    assert got, answer
    return got + receive_texts(client, count - len(got))


def _befriend(a: ClassicClient, b: ClassicClient, a_id: int, b_id: int) -> None:
    assert a.request({"msgid": 7, "friendid": b_id})["pending"] is True
    assert b.receive()["msgid"] == 140  # pushed across hosts
    assert b.request({"msgid": 7, "friendid": a_id})["errno"] == 0


def test_users_on_two_hosts_chat_live_offline_in_groups_with_presence(cluster: Cluster) -> None:
    """One-to-one and group chat across hosts, live and offline, and presence of both sides."""
    n1, n2 = cluster.nodes
    alice, bob, carol, dan = cluster.register("alice", "bob", "carol", "dan")
    a, _ = cluster.login(n1, alice)
    b, _ = cluster.login(n2, bob)
    _befriend(a, b, alice, bob)

    # One-to-one, live, both ways.
    for i in range(20):
        a.send({"msgid": 6, "toid": bob, "msg": f"a{i} 你好 🙂"})
    assert receive_texts(b, 20) == [f"a{i} 你好 🙂" for i in range(20)]
    for i in range(20):
        b.send({"msgid": 6, "toid": alice, "msg": f"b{i}"})
    assert receive_texts(a, 20) == [f"b{i}" for i in range(20)]

    # One-to-one, offline: carol (never logged in) gets it at her login on node 2.
    _send_acknowledged(a, [{"msgid": 6, "toid": carol, "msg": f"for carol {i}"} for i in range(5)])
    c, answer = cluster.login(n2, carol)
    assert _stored_texts(c, answer, 5) == [f"for carol {i}" for i in range(5)]

    # A group over both hosts; dan is a member but offline while it talks.
    group = a.request({"msgid": 8, "groupname": "tea", "groupdesc": "across hosts"})["groupid"]
    d, _ = cluster.login(n2, dan)
    for client in (b, c, d):
        assert client.request({"msgid": 9, "groupid": group})["errno"] == 0
    assert d.request({"msgid": 3})["msgid"] == 103
    d.close()
    _send_acknowledged(a, [{"msgid": 10, "groupid": group, "msg": f"g{i}"} for i in range(10)])
    expected = [f"g{i}" for i in range(10)]
    assert receive_texts(b, 10) == expected
    assert receive_texts(c, 10) == expected
    _send_acknowledged(b, [{"msgid": 10, "groupid": group, "msg": "from bob"}])
    assert receive_texts(a, 1) == ["from bob"]
    assert receive_texts(c, 1) == ["from bob"]
    # Each was acknowledged, so in the log: dan's login brings them all.
    d, answer = cluster.login(n1, dan)
    assert _stored_texts(d, answer, 11) == [*expected, "from bob"]

    # Presence across hosts: bob (node 2) reads online on node 1, then offline.
    _wait_for_state(cluster, alice, bob, "online")
    b.close()
    _wait_for_state(cluster, alice, bob, "offline")
    for client in (a, c, d):
        sync(client)  # nothing more arrived: no message twice
        client.close()


def test_node_host_cut_off_catches_up_from_the_log(cluster: Cluster) -> None:
    """Node 2's host cut off and back: its user gets every acknowledged message once, in order."""
    n1, n2 = cluster.nodes
    alice, bob = cluster.register("alice", "bob")
    a, _ = cluster.login(n1, alice)
    b, _ = cluster.login(n2, bob)
    _befriend(a, b, alice, bob)
    a.send({"msgid": 6, "toid": bob, "msg": "before"})
    assert receive_texts(b, 1) == ["before"]

    cluster.hosts.set_link(cluster.hosts.node2, "back", up=False)
    try:
        processes.wait_for_log(n2.child, "bus: connection lost", seconds(20))
        sent = [f"during the cut {i}" for i in range(30)]
        _send_acknowledged(a, [{"msgid": 6, "toid": bob, "msg": text} for text in sent])
        # Node 2's presence expires: bob reads offline on node 1 meanwhile.
        _wait_for_state(cluster, alice, bob, "offline")
        # Bob writes from the cut-off host: node 2 cannot reach the database.
        b.send({"msgid": 6, "toid": alice, "msg": "from the cut-off host", "ref": 99})
    finally:
        cluster.hosts.set_link(cluster.hosts.node2, "back", up=True)

    # Once the link is back: every message alice sent, in order, and the
    # acknowledgement of bob's (in any place among them).
    b.sock.settimeout(seconds(60))
    frames = [b.receive() for _ in range(len(sent) + 1)]
    acks = [f for f in frames if f["msgid"] == 106]
    assert [f["msg"] for f in frames if f["msgid"] == 6] == sent
    assert [(f["errno"], f["ref"]) for f in acks] == [(0, 99)], frames
    assert receive_texts(a, 1) == ["from the cut-off host"]
    processes.wait_for_log(n2.child, "bus: reconnected", seconds(5))
    _wait_for_state(cluster, alice, bob, "online")
    sync(b)  # and nothing arrived twice
    a.close()
    b.close()
