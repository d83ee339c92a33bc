"""Contract tests for ``Presence``: LocalPresence and RedisPresence on a real redis-server.

The first half runs against both implementations (RedisPresence on one
redis-server and on a real 3-primary Redis Cluster); "nodes" of the local
implementation share one ``LocalPresenceHub`` (that is how it models several
nodes). The second half is Redis-only: a SIGKILLed node process goes offline
within ``expiry``, a node whose key expired counts as dead, and presence
recovers by itself after Redis restarts or thaws, never raising meanwhile.
"""

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from clusterchat.cluster import processes
from clusterchat.presence.base import NodeInfo, Presence
from clusterchat.presence.local import LocalPresence, LocalPresenceHub
from clusterchat.presence.redis import RedisPresence
from tests.support.defaults import presence_timing
from tests.support.processes import assert_stopped
from tests.support.redis import RedisServer
from tests.support.redis_cluster import RedisCluster
from tests.support.timing import seconds

PresenceFactory = Callable[..., Awaitable[Presence]]

FAST: dict[str, Any] = {"heartbeat_interval": 0.2, "expiry": 1.0}


WAIT = seconds(5)  # the bound of every wait on a condition


async def poll(condition: Callable[[], Awaitable[bool]]) -> None:
    """Poll an async ``condition`` every 20 ms until it holds; fail after ``WAIT``."""
    async with asyncio.timeout(WAIT):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.02)


@pytest.fixture
async def started() -> AsyncIterator[list[Presence]]:
    """Presences started by a test; each is closed at teardown."""
    presences: list[Presence] = []
    yield presences
    for presence in presences:
        await presence.close()


@pytest.fixture
def redis_presence(started: list[Presence]) -> PresenceFactory:
    """Start a RedisPresence: ``await redis_presence(server, "a", expiry=...)``."""
    prefix = f"t{uuid.uuid4().hex[:8]}"

    async def make(
        server: RedisServer | RedisCluster, node_id: str, **options: Any
    ) -> RedisPresence:
        options.setdefault("prefix", prefix)
        presence = RedisPresence(
            server.url,
            node_id=node_id,
            address=f"{node_id}.test:7000",
            **presence_timing(**options),
        )
        await presence.start()
        started.append(presence)
        return presence

    return make


@pytest.fixture(
    params=[
        "local",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("redis-cluster", marks=pytest.mark.integration),
    ]
)
def presence_kind(
    request: pytest.FixtureRequest,
) -> tuple[str, RedisServer | RedisCluster | None]:
    """The implementation under test, and its redis-server (or cluster) if it needs one."""
    kind: str = request.param
    if kind == "local":
        return kind, None
    if kind == "redis-cluster":
        return kind, request.getfixturevalue("shared_redis_cluster")
    return kind, request.getfixturevalue("redis_server")


@pytest.fixture
def make_presence(
    presence_kind: tuple[str, RedisServer | RedisCluster | None],
    redis_presence: PresenceFactory,
) -> PresenceFactory:
    """Start one node's presence on the implementation under test."""
    _, server = presence_kind
    hub = LocalPresenceHub()

    async def make(node_id: str) -> Presence:
        if server is None:
            return LocalPresence(node_id, f"{node_id}.test:7000", hub)
        return await redis_presence(server, node_id)

    return make


# -- the contract, for every implementation ------------------------------------------


async def test_user_online_then_offline(make_presence: PresenceFactory) -> None:
    """A user reads online after user_online and offline after user_offline."""
    a = await make_presence("a")
    assert await a.online([1, 2]) == set()
    await a.user_online(1)
    assert await a.online([1, 2]) == {1}
    await a.user_offline(1)
    assert await a.online([1, 2]) == set()
    assert await a.online([]) == set()


async def test_two_nodes_see_each_others_users(make_presence: PresenceFactory) -> None:
    """Each node sees users online elsewhere; a user on two nodes stays online until both drop."""
    a, b = await make_presence("a"), await make_presence("b")
    await a.user_online(1)
    await b.user_online(2)
    assert await a.online([1, 2, 3]) == {1, 2}
    assert await b.online([1, 2, 3]) == {1, 2}
    await a.user_online(3)
    await b.user_online(3)
    await a.user_offline(3)
    assert await b.online([3]) == {3}
    await b.user_offline(3)
    assert await a.online([3]) == set()


async def test_close_removes_only_own_users(
    make_presence: PresenceFactory,
    presence_kind: tuple[str, RedisServer | RedisCluster | None],
) -> None:
    """Closing one node takes its users offline and leaves the other node's users online."""
    a, b = await make_presence("a"), await make_presence("b")
    await a.user_online(1)
    await b.user_online(2)
    await a.close()
    assert await b.online([1, 2]) == {2}


# -- RedisPresence --------------------------------------------------------------------


@pytest.mark.integration
async def test_nodes_lists_live_nodes_with_their_users(
    redis_server: RedisServer, redis_presence: PresenceFactory
) -> None:
    """nodes() reports every live node with its address and online users."""
    a = await redis_presence(redis_server, "a")
    b = await redis_presence(redis_server, "b")
    await a.user_online(1)
    await a.user_online(2)
    await b.user_online(3)
    nodes = sorted(await a.nodes(), key=lambda n: n.node_id)
    assert nodes == [
        NodeInfo("a", "a.test:7000", frozenset({1, 2})),
        NodeInfo("b", "b.test:7000", frozenset({3})),
    ]


@pytest.mark.integration
async def test_unstarted_presence_only_observes(
    redis_server: RedisServer, redis_presence: PresenceFactory
) -> None:
    """A never-started presence (``clusterchat status``) reads nodes; its close removes nothing."""
    a = await redis_presence(redis_server, "a", prefix="watched")
    await a.user_online(1)
    observer = RedisPresence(
        redis_server.url, node_id="status", address="", prefix="watched", **presence_timing()
    )
    assert await observer.nodes() == [NodeInfo("a", "a.test:7000", frozenset({1}))]
    await observer.close()
    assert await a.online([1]) == {1}
    assert [n.node_id for n in await a.nodes()] == ["a"]


@pytest.mark.integration
async def test_online_answers_many_ids_across_chunks(
    redis_server: RedisServer, redis_presence: PresenceFactory
) -> None:
    """online() over thousands of ids finds exactly the online ones, on every node."""
    a = await redis_presence(redis_server, "a")
    b = await redis_presence(redis_server, "b")
    for uid in (0, 999, 1000):
        await a.user_online(uid)
    await b.user_online(2999)
    assert await a.online(range(5000)) == {0, 999, 1000, 2999}


@pytest.mark.integration
async def test_users_of_a_node_whose_key_expired_read_offline(
    redis_server: RedisServer, redis_presence: PresenceFactory
) -> None:
    """A node without its node key is dead, even while its user set still exists."""
    a = await redis_presence(redis_server, "a")
    b = await redis_presence(redis_server, "b", heartbeat_interval=30.0, expiry=60.0)
    await b.user_online(5)
    assert await a.online([5]) == {5}
    admin = Redis.from_url(redis_server.url)
    try:
        [key] = await admin.keys("*:node:b")
        assert isinstance(key, bytes)
        prefix = key.decode().rsplit(":node:", 1)[0]
        assert await admin.delete(f"{prefix}:node:b") == 1
        assert await admin.exists(f"{prefix}:users:b") == 1
    finally:
        await admin.aclose()
    assert await a.online([5]) == set()
    assert [n.node_id for n in await a.nodes()] == ["a"]


CHILD = """
import asyncio, sys
from clusterchat.presence.redis import RedisPresence

async def main() -> None:
    presence = RedisPresence(sys.argv[1], node_id="doomed", address="doomed.test:1",
                             prefix=sys.argv[2], heartbeat_interval=0.2, expiry=1.0)
    await presence.start()
    await presence.user_online(7)
    print("online", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.integration
async def test_sigkilled_node_goes_offline_within_expiry(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A node process killed with SIGKILL (no close) has its users offline within expiry."""
    observer = RedisPresence(
        redis_server.url, node_id="observer", address="", prefix="kill", **presence_timing()
    )
    await observer.start()
    argv = [sys.executable, "-c", CHILD, redis_server.url, "kill"]
    child = await asyncio.to_thread(
        processes.spawn, "presence-node", argv, log_path=tmp_path / "node.log"
    )
    try:

        async def seen_online() -> bool:
            return await observer.online([7]) == {7}

        await poll(seen_online)
        await asyncio.to_thread(processes.kill, child)
        killed_at = time.monotonic()

        async def gone() -> bool:
            return await observer.online([7]) == set()

        async with asyncio.timeout(seconds(1.0 + 1.0)):  # expiry + slack
            await poll(gone)
        assert time.monotonic() - killed_at <= 1.0 + seconds(0.5)
        assert [n.node_id for n in await observer.nodes()] == ["observer"]
    finally:
        await asyncio.to_thread(processes.kill, child)
        await observer.close()
    assert_stopped(child)


@pytest.mark.integration
async def test_presence_recovers_after_redis_restart(
    redis_server: RedisServer, redis_presence: PresenceFactory
) -> None:
    """While Redis is down nothing raises; after a restart the users are back by themselves."""
    a = await redis_presence(redis_server, "a", **FAST)
    await a.user_online(1)
    await a.user_online(2)
    await asyncio.to_thread(redis_server.kill)

    async def down() -> bool:
        await a.user_online(3)  # must not raise while Redis is down
        return await a.online([1]) == set()

    await poll(down)
    await a.user_offline(2)
    assert await a.nodes() == []
    await asyncio.to_thread(redis_server.start)

    async def recovered() -> bool:
        return await a.online([1, 2, 3]) == {1, 3}

    await poll(recovered)


@pytest.mark.integration
async def test_frozen_redis_never_stalls_or_raises(
    redis_server: RedisServer, redis_presence: PresenceFactory
) -> None:
    """With Redis SIGSTOPped, calls return within the op timeout and answer 'nobody online'."""
    a = await redis_presence(redis_server, "a", **FAST)
    await a.user_online(1)
    redis_server.pause()
    try:
        for uid in range(10, 20):
            async with asyncio.timeout(seconds(1.0)):  # 2 x op timeout at most
                await a.user_online(uid)
                assert await a.online([1, uid]) <= {1, uid}

        async def down() -> bool:
            return await a.online([1]) == set()

        await poll(down)
    finally:
        redis_server.resume()

    async def recovered() -> bool:
        return await a.online([1, 15]) == {1, 15}

    await poll(recovered)


@pytest.mark.integration
async def test_presence_follows_a_cluster_failover(
    redis_cluster: RedisCluster, redis_presence: PresenceFactory
) -> None:
    """The primary of the presence keys' slot SIGKILLed: nothing raises, and once its
    replica took over, changes made meanwhile and after are read again."""
    a = await redis_presence(redis_cluster, "a", **FAST)
    b = await redis_presence(redis_cluster, "b", **FAST)
    await a.user_online(1)
    assert await b.online([1]) == {1}
    assert isinstance(a, RedisPresence)
    victim = await asyncio.to_thread(redis_cluster.owner, key_slot(a._registry.encode()))
    replica = await asyncio.to_thread(redis_cluster.replica_of, victim)
    await asyncio.to_thread(redis_cluster.kill, victim)
    await a.user_online(2)  # while the shard has no primary: must not raise
    await a.user_offline(1)

    async def recovered() -> bool:
        await a.user_online(3)
        return await b.online([1, 2, 3]) == {2, 3}

    async with asyncio.timeout(seconds(20)):  # failover: node timeout + election
        while True:
            if await recovered():
                break
            await asyncio.sleep(0.1)
    assert await asyncio.to_thread(redis_cluster.promoted, replica)
    assert {n.node_id for n in await b.nodes()} == {"a", "b"}
