"""``clusterchat node --workers N`` (issue 11): N full nodes sharing one port with SO_REUSEPORT.

Real processes: a supervisor started as users start it, its workers found
through /proc, a real redis-server joining them, classic clients chatting
across workers.
"""

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clusterchat.cluster.children import start_node
from clusterchat.cluster.node_command import node_argv
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.processes import Child, spawn, stop, wait_for_log
from clusterchat.cluster.status import read_status
from tests.support.classic import PASSWORD, ClassicClient, login, register
from tests.support.database import migrated
from tests.support.node import TEST_NODE_ENV
from tests.support.processes import assert_stopped
from tests.support.redis import RedisServer
from tests.support.timing import seconds

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


class _Address:
    def __init__(self, port: int) -> None:
        self.host, self.port = HOST, port


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(part) for part in text.split()]


def _start(tmp_path: Path, redis: RedisServer, workers: int) -> tuple[Child, int]:
    """A supervisor on a port it picks (port 0); its child and that port."""
    url = migrated(f"sqlite:///{tmp_path / 'chat.db'}")
    argv = node_argv(0, db_url=url, redis_url=redis.url, node_id="box", workers=workers)
    child = spawn("box", argv, log_path=tmp_path / "box.log", env={**os.environ, **TEST_NODE_ENV})
    wait_for_log(child, f"{workers} workers listening on {HOST}:", seconds(60))
    line = next(
        line
        for line in child.log_path.read_text().splitlines()
        if f"{workers} workers listening on" in line
    )
    port = int(line.split(f"listening on {HOST}:")[1].split()[0])
    return child, port


def test_workers_share_the_port_and_chat_across_each_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    child, port = _start(tmp_path, redis_server, workers=2)
    try:
        workers = _children(child.pid)
        assert len(workers) == 2
        node = _Address(port)
        ids = register(node, *(f"user{i}" for i in range(24)))
        clients = [login(node, uid)[0] for uid in ids]
        # Each worker is a node of the cluster, and the kernel spread the logins over both.
        nodes = asyncio.run(read_status(redis_server.url, "clusterchat"))
        online = {n.node_id: len(n.users) for n in nodes}
        assert set(online) == {"box-w1", "box-w2"}
        assert all(count > 0 for count in online.values()), online
        assert sum(online.values()) == 24
        # Users on different workers talk through Redis.
        where = {uid: n.node_id for n in nodes for uid in n.users}
        sender = ids[0]
        other = next(uid for uid in ids if where[uid] != where[sender])
        clients[0].send({"msgid": 6, "id": sender, "toid": other, "msg": "across"})
        push = clients[ids.index(other)].receive()
        assert (push["msgid"], push["msg"], push["id"]) == (6, "across", sender)
        for client in clients:
            client.close()
    finally:
        status = stop(child, timeout=seconds(30))
    assert status == 0  # SIGTERM: every worker drained, the supervisor exited 0
    for pid in workers:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    assert_stopped(child)


def test_a_killed_worker_is_started_again(tmp_path: Path, redis_server: RedisServer) -> None:
    child, port = _start(tmp_path, redis_server, workers=2)
    try:
        first, second = _children(child.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + seconds(30)
        while time.monotonic() < deadline:
            now = _children(child.pid)
            if len(now) == 2 and first not in now:
                break
            time.sleep(0.1)
        assert second in _children(child.pid)
        assert len(_children(child.pid)) == 2
        assert "starting it again" in child.log_path.read_text()
        wait_for_log(child, "listening on", seconds(30))
        # Stored while only one worker listened, delivered by whichever the login reaches.
        node = _Address(port)
        alice, bob = register(node, "alice", "bob")
        a, _ = login(node, alice)
        a.send({"msgid": 6, "id": alice, "toid": bob, "msg": "later"})
        assert a.request({"msgid": 120, "ref": 1})["msgid"] == 121
        b = ClassicClient(node.host, node.port)
        answer = b.request({"msgid": 1, "id": bob, "password": PASSWORD})
        assert answer["errno"] == 0
        assert [json.loads(m)["msg"] for m in answer["offlinemsg"]] == ["later"]
        a.close()
        b.close()
    finally:
        assert stop(child, timeout=seconds(30)) == 0
    assert_stopped(child)


def test_workers_refuse_together_what_one_node_refuses(tmp_path: Path) -> None:
    """A database without the schema: the workers exit 2 before listening, so does the box."""
    argv = node_argv(0, db_url=f"sqlite:///{tmp_path / 'none.db'}", workers=2)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds(60), env={**os.environ}
    )
    assert done.returncode == 2, done.stderr
    assert "run: clusterchat db upgrade" in done.stderr
    assert "exited with status 2 before it listened" in done.stderr


def test_start_node_with_workers_returns_once_every_worker_listens(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """What ``up`` and the bench start a node with: ready means all of it, not one worker."""
    url = migrated(f"sqlite:///{tmp_path / 'chat.db'}")
    child = start_node(
        "box",
        free_port(HOST),
        db_url=url,
        redis_url=redis_server.url,
        log_path=tmp_path / "box.log",
        timeout=seconds(60),
        workers=2,
        env={**os.environ, **TEST_NODE_ENV},
    )
    try:
        assert "2 workers listening on" in child.log_path.read_text()
        assert len(_children(child.pid)) == 2
    finally:
        assert stop(child, timeout=seconds(30)) == 0
    assert_stopped(child)
