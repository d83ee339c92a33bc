"""Contract tests for ``Bus``: LocalBus and RedisBus on a real redis-server.

The first half runs against every implementation (``local``, ``redis``,
``redis-sharded`` for SPUBLISH/SSUBSCRIBE on one server, and ``redis-cluster``
for RedisClusterBus on a real 3-primary Redis Cluster). The second half injects the faults
of FIELD-NOTES.md into a real redis-server (SIGKILL and restart on the same
port, SIGSTOP, an output-buffer-limit disconnect, a long silence) and checks
that RedisBus recovers by itself and tells the node it is back.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis

from clusterchat.bus.base import Bus, BusError
from clusterchat.bus.channels import ChannelNames
from clusterchat.bus.local import LocalBus, LocalHub
from clusterchat.bus.redis import PROBE_MAGIC, RedisBus
from clusterchat.bus.redis_cluster import RedisClusterBus
from tests.support.defaults import bus_timing
from tests.support.redis import RedisFactory, RedisServer
from tests.support.redis_cluster import RedisCluster
from tests.support.timing import seconds

WAIT = seconds(5)  # the bound of every wait on a condition

# Fast fault detection for the fault tests (the defaults are for production).
FAST: dict[str, Any] = {
    "probe_interval": 0.2,
    "probe_timeout": 0.5,
    "publish_timeout": 0.5,
    "connect_timeout": 0.5,
    "backoff_base": 0.05,
    "backoff_cap": 0.3,
}


class Recorder:
    """A ``BusHandler`` that records what the bus hands it; its channels are the registry."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.channels: set[str] = set()
        self.restored = 0
        self._changed = asyncio.Event()

    def on_bus_message(self, channel: str, payload: bytes) -> None:
        self.messages.append((channel, payload))
        self._changed.set()

    def bus_channels(self) -> Iterable[str]:
        return set(self.channels)

    def on_bus_restored(self) -> None:
        self.restored += 1
        self._changed.set()

    async def until_restored(self, count: int) -> None:
        """Wait until ``on_bus_restored`` has been called ``count`` times."""
        await self.until(lambda: self.restored == count)

    def on(self, channel: str) -> list[bytes]:
        """The payloads received on ``channel``, in order."""
        return [payload for ch, payload in self.messages if ch == channel]

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (at most ``WAIT``) until ``condition()`` holds, re-checking on every callback."""
        async with asyncio.timeout(WAIT):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Node:
    """One bus and its handler, as a chat node would hold them."""

    bus: Bus
    handler: Recorder = field(default_factory=Recorder)

    async def join(self, channel: str) -> None:
        """Register the channel (the registry is the truth), then subscribe."""
        self.handler.channels.add(channel)
        await self.bus.subscribe(channel)

    async def leave(self, channel: str) -> None:
        """Unregister the channel, then unsubscribe."""
        self.handler.channels.discard(channel)
        await self.bus.unsubscribe(channel)

    @property
    def redis(self) -> RedisBus:
        """The bus as a RedisBus (for Redis-only tests)."""
        assert isinstance(self.bus, RedisBus)
        return self.bus


NodeFactory = Callable[..., Awaitable[Node]]


async def poll(condition: Callable[[], bool | Awaitable[bool]]) -> None:
    """Poll ``condition`` (sync or async) every 20 ms until it holds; fail after ``WAIT``."""
    async with asyncio.timeout(WAIT):
        while True:
            result = condition()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.02)


@pytest.fixture
async def node_factory() -> AsyncIterator[Callable[[Callable[[], Bus]], Awaitable[Node]]]:
    """Start nodes from bus constructors; close every bus at teardown."""
    nodes: list[Node] = []

    async def make(build: Callable[[], Bus]) -> Node:
        node = Node(build())
        await node.bus.start(node.handler)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.bus.close()


@pytest.fixture(
    params=[
        "local",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("redis-sharded", marks=pytest.mark.integration),
        pytest.param("redis-cluster", marks=pytest.mark.integration),
    ]
)
def bus_kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The implementation under test, and the Redis URL if it needs one."""
    kind: str = request.param
    if kind == "local":
        return kind, ""
    if kind == "redis-cluster":
        cluster: RedisCluster = request.getfixturevalue("shared_redis_cluster")
        return kind, cluster.url
    server: RedisServer = request.getfixturevalue("redis_server")
    return kind, server.url


@pytest.fixture
async def make_node(
    bus_kind: tuple[str, str],
    node_factory: Callable[[Callable[[], Bus]], Awaitable[Node]],
) -> NodeFactory:
    """Start a node on the implementation under test; nodes of one test see each other."""
    kind, url = bus_kind
    hub = LocalHub()
    prefix = f"t{uuid.uuid4().hex[:8]}"

    async def make(node_id: str) -> Node:
        if kind == "local":
            return await node_factory(lambda: LocalBus(hub))
        if kind == "redis-cluster":
            return await node_factory(
                lambda: RedisClusterBus(url, node_id=node_id, prefix=prefix, **bus_timing())
            )
        return await node_factory(
            lambda: RedisBus(
                url,
                node_id=node_id,
                prefix=prefix,
                sharded=kind == "redis-sharded",
                **bus_timing(),
            )
        )

    return make


@pytest.fixture
async def redis_node(
    node_factory: Callable[[Callable[[], Bus]], Awaitable[Node]],
) -> Callable[..., Awaitable[Node]]:
    """Start a RedisBus node: ``await redis_node(server, "a", probe_interval=...)``."""
    prefix = f"t{uuid.uuid4().hex[:8]}"

    async def make(server: RedisServer, node_id: str, **options: Any) -> Node:
        return await node_factory(
            lambda: RedisBus(server.url, node_id=node_id, prefix=prefix, **bus_timing(**options))
        )

    return make


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client of ``redis_server`` for inspecting it (INFO, CLIENT LIST)."""
    client = Redis.from_url(redis_server.url, client_name="test-admin")
    yield client
    await client.aclose()


async def connected_clients(client: Redis) -> int:
    """``connected_clients`` from INFO clients (the inspecting client included)."""
    info = await client.info("clients")
    return int(info["connected_clients"])


async def clients_named(client: Redis, name: str) -> int:
    """How many connections Redis holds whose CLIENT SETNAME is ``name``."""
    return sum(1 for entry in await client.client_list() if entry.get("name") == name)


# -- the contract, for every implementation ------------------------------------------


async def test_publish_to_subscribed_channel_delivers_in_order(make_node: NodeFactory) -> None:
    """A publish to a subscribed channel returns 1 and the handler gets every payload in order."""
    a = await make_node("a")
    await a.join("user:1")
    payloads = [f"message {i}".encode() for i in range(50)]
    for payload in payloads:
        assert await a.bus.publish("user:1", payload) == 1
    await a.handler.until(lambda: len(a.handler.messages) == len(payloads))
    assert a.handler.messages == [("user:1", p) for p in payloads]


async def test_publish_to_unsubscribed_channel_returns_zero(make_node: NodeFactory) -> None:
    """Nobody subscribed means 0 receivers (the caller stores the message)."""
    a = await make_node("a")
    await a.join("user:1")
    assert await a.bus.publish("user:2", b"nobody home") == 0


async def test_two_nodes_see_each_other(make_node: NodeFactory) -> None:
    """Each node receives what the other publishes; a shared channel counts both."""
    a, b = await make_node("a"), await make_node("b")
    await a.join("user:1")
    await b.join("user:2")
    assert await a.bus.publish("user:2", b"a->b") == 1
    assert await b.bus.publish("user:1", b"b->a") == 1
    await a.join("user:3")
    await b.join("user:3")
    assert await a.bus.publish("user:3", b"to both") == 2
    await a.handler.until(lambda: a.handler.on("user:3") == [b"to both"])
    await b.handler.until(lambda: b.handler.on("user:3") == [b"to both"])
    assert a.handler.on("user:1") == [b"b->a"]
    assert b.handler.on("user:2") == [b"a->b"]
    assert a.handler.on("user:2") == []
    assert b.handler.on("user:1") == []


async def test_unsubscribe_stops_delivery(make_node: NodeFactory) -> None:
    """After unsubscribe returns, publishes count 0 and nothing more arrives on that channel."""
    a, b = await make_node("a"), await make_node("b")
    await a.join("user:1")
    await a.join("user:2")
    assert await b.bus.publish("user:1", b"before") == 1
    await a.leave("user:1")
    assert await b.bus.publish("user:1", b"after") == 0
    assert await b.bus.publish("user:2", b"marker") == 1
    await a.handler.until(lambda: a.handler.on("user:2") == [b"marker"])
    assert a.handler.on("user:1") == [b"before"]


async def test_binary_payloads_arrive_intact(make_node: NodeFactory) -> None:
    """Payloads are opaque bytes: every byte value, empty, NUL-led and 1 MiB arrive unchanged."""
    a, b = await make_node("a"), await make_node("b")
    await a.join("user:1")
    payloads = [bytes(range(256)), b"", b"\x00\x00", "ünïcødé ✓".encode(), b"\xff" * (1 << 20)]
    for payload in payloads:
        assert await b.bus.publish("user:1", payload) == 1
    await a.handler.until(lambda: len(a.handler.messages) == len(payloads))
    assert a.handler.on("user:1") == payloads


async def test_concurrent_publishes_each_get_their_own_count(make_node: NodeFactory) -> None:
    """Publishes issued together each return their own channel's receiver count."""
    a, b = await make_node("a"), await make_node("b")
    await a.join("user:1")
    await b.join("user:1")
    await b.join("user:2")
    counts = await asyncio.gather(
        a.bus.publish("user:1", b"x"), a.bus.publish("user:2", b"y"), a.bus.publish("user:3", b"z")
    )
    assert list(counts) == [2, 1, 0]


# -- RedisBus under real faults -------------------------------------------------------


async def test_barrier_returns_after_everything_published_before_it_arrived(
    make_node: NodeFactory,
) -> None:
    """After ``barrier()``, the handler has every payload another node published before it."""
    a, b = await make_node("a"), await make_node("b")
    await b.join("user:2")
    payloads = [f"before the barrier {i}".encode() for i in range(200)]
    futures = [a.bus.publish("user:2", payload) for payload in payloads]
    assert await asyncio.gather(*futures) == [1] * len(payloads)
    await b.bus.barrier()
    assert b.handler.on("user:2") == payloads  # no waiting: the barrier was enough


def test_channel_names_round_trip_with_and_without_hash_tag() -> None:
    """Bare names gain the prefix (inside a hash tag when sharded) and come back unchanged."""
    classic, sharded = ChannelNames("cc"), ChannelNames("cc", hash_tag=True)
    assert classic.full(ChannelNames.user(42)) == "cc:user:42"
    assert sharded.full(ChannelNames.user(42)) == "cc:{user:42}"
    assert sharded.full(ChannelNames.node("n1")) == "cc:{node:n1}"
    for names in (classic, sharded):
        assert names.bare(names.full("user:42")) == "user:42"
        assert names.bare("other:user:42") is None
    assert sharded.bare("cc:user:42") is None
    with pytest.raises(ValueError, match="invalid"):
        sharded.full("user:{42}")


@pytest.mark.integration
async def test_own_node_channel_carries_payloads_but_never_probes(
    redis_server: RedisServer, redis_node: Callable[..., Awaitable[Node]]
) -> None:
    """The node channel is always subscribed; probes on it never reach the handler."""
    a = await redis_node(redis_server, "a", **FAST)
    await poll(lambda: a.redis.probes >= 4)
    assert await a.bus.publish("node:a", b"for node a") == 1
    await a.handler.until(lambda: a.handler.messages == [("node:a", b"for node a")])
    assert not any(p.startswith(PROBE_MAGIC) for _, p in a.handler.messages)


@pytest.mark.integration
async def test_quiet_subscriber_survives_long_silence(
    redis_server: RedisServer, redis_node: Callable[..., Awaitable[Node]]
) -> None:
    """A subscriber that hears nothing for 6.5 s (> redis-py's 5 s default) keeps its connection."""
    a = await redis_node(redis_server, "a", probe_interval=seconds(60))
    b = await redis_node(redis_server, "b", probe_interval=seconds(60))
    await a.join("user:1")
    # The condition under test is elapsed silence itself, so this sleep is the test, not a sync.
    await asyncio.sleep(6.5)
    assert await b.bus.publish("user:1", b"still there?") == 1
    await a.handler.until(lambda: a.handler.on("user:1") == [b"still there?"])
    assert (a.redis.connects, b.redis.connects) == (1, 1)
    assert a.handler.restored == 0


@pytest.mark.integration
async def test_redis_killed_then_restarted_on_same_port(
    redis_server: RedisServer, redis_node: Callable[..., Awaitable[Node]]
) -> None:
    """SIGKILL: publish raises BusError in time; after restart: resubscribed, restored once."""
    a = await redis_node(redis_server, "a", **FAST)
    b = await redis_node(redis_server, "b", **FAST)
    await a.join("user:1")
    await asyncio.to_thread(redis_server.kill)

    started = time.monotonic()
    with pytest.raises(BusError):
        await b.bus.publish("user:1", b"lost in the outage")
    assert time.monotonic() - started < FAST["publish_timeout"] + seconds(1)
    await poll(lambda: not a.redis.connected)
    await a.join("user:9")  # while Redis is down: must not raise; applied on reconnect
    await a.leave("user:1")
    await a.join("user:1")

    await asyncio.to_thread(redis_server.start)
    await a.handler.until(lambda: a.handler.restored == 1)
    await b.handler.until(lambda: b.handler.restored == 1)
    assert await b.bus.publish("user:1", b"after restart") == 1
    assert await b.bus.publish("user:9", b"joined while down") == 1
    await a.handler.until(lambda: len(a.handler.messages) == 2)
    assert a.handler.messages == [("user:1", b"after restart"), ("user:9", b"joined while down")]
    assert (a.handler.restored, a.redis.restores, a.redis.connects) == (1, 1, 2)


@pytest.mark.integration
async def test_sigstopped_redis_is_detected_by_the_probe(
    redis_server: RedisServer, redis_node: Callable[..., Awaitable[Node]]
) -> None:
    """A frozen Redis (SIGSTOP) fails the probe; after SIGCONT the bus reconnects and restores."""
    a = await redis_node(redis_server, "a", **FAST)
    await a.join("user:1")
    redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(BusError):
            await a.bus.publish("user:1", b"frozen")
        assert time.monotonic() - started < FAST["publish_timeout"] + seconds(1)
        await poll(lambda: not a.redis.connected)
    finally:
        redis_server.resume()
    await a.handler.until(lambda: a.handler.restored == 1)
    assert await a.bus.publish("user:1", b"thawed") == 1
    await a.handler.until(lambda: a.handler.on("user:1") == [b"thawed"])
    assert a.handler.restored == 1


@pytest.mark.integration
async def test_output_buffer_limit_disconnect_reconnects_and_restores(
    redis_factory: RedisFactory, redis_node: Callable[..., Awaitable[Node]]
) -> None:
    """A subscriber dropped for client-output-buffer-limit pubsub resubscribes and restores."""
    limit = ("--client-output-buffer-limit", "pubsub 64kb 32kb 1")
    server = await asyncio.to_thread(redis_factory, *limit)
    a = await redis_node(server, "a", **FAST)
    b = await redis_node(server, "b", **FAST)
    await a.join("user:1")
    big = b"x" * (100 * 1024)  # each one alone overflows the 64 KiB hard limit
    await asyncio.gather(*(b.bus.publish("user:1", big) for _ in range(10)))
    await a.handler.until(lambda: a.handler.restored == 1)
    assert a.redis.connects == 2
    assert await b.bus.publish("user:1", b"small again") == 1
    await a.handler.until(lambda: b"small again" in a.handler.on("user:1"))
    assert a.handler.restored == 1


@pytest.mark.integration
async def test_pipelined_publishes_use_one_connection(
    redis_server: RedisServer, admin: Redis, redis_node: Callable[..., Awaitable[Node]]
) -> None:
    """2,500 publishes issued in one turn all succeed, in order, over one publisher connection."""
    a = await redis_node(redis_server, "a")
    b = await redis_node(redis_server, "b")
    await a.join("user:1")
    payloads = [str(i).encode() for i in range(2500)]
    counts = await asyncio.gather(*(b.bus.publish("user:1", p) for p in payloads))
    assert counts == [1] * len(payloads)
    await a.handler.until(lambda: len(a.handler.messages) == len(payloads))
    assert a.handler.on("user:1") == payloads
    assert await clients_named(admin, "clusterchat-pub:b") == 1
    assert await clients_named(admin, "clusterchat-sub:b") == 1
    assert await connected_clients(admin) == 5  # admin + (sub, pub) per node


@pytest.mark.integration
async def test_reconnects_leak_no_connections(
    redis_server: RedisServer, admin: Redis, redis_node: Callable[..., Awaitable[Node]]
) -> None:
    """After several freeze/thaw outages Redis holds no more connections than before."""
    a = await redis_node(redis_server, "a", **FAST)
    await a.join("user:1")
    assert await a.bus.publish("user:1", b"warm up the publisher") == 1
    baseline = await connected_clients(admin)
    assert baseline == 3  # admin, a's subscriber, a's publisher
    for cycle in range(1, 4):
        redis_server.pause()
        try:
            with pytest.raises(BusError):
                await a.bus.publish("user:1", b"frozen")
            await poll(lambda: not a.redis.connected)
        finally:
            redis_server.resume()
        await a.handler.until_restored(cycle)
        assert await a.bus.publish("user:1", b"back") == 1

    async def settled() -> bool:
        return await connected_clients(admin) <= baseline

    # Connections abandoned during the freeze are closed by us; Redis notices after SIGCONT.
    await poll(settled)
    assert a.redis.connects >= 4


@pytest.mark.integration
async def test_start_while_redis_down_restores_when_it_comes_up(
    redis_server: RedisServer, redis_node: Callable[..., Awaitable[Node]]
) -> None:
    """A bus started with Redis down does not raise, fails publishes, restores once it is up."""
    await asyncio.to_thread(redis_server.stop)
    a = await redis_node(redis_server, "a", start_timeout=0.3, **FAST)
    assert not a.redis.connected
    with pytest.raises(BusError):
        await a.bus.publish("user:1", b"nobody")
    await a.join("user:1")
    await asyncio.to_thread(redis_server.start)
    await a.handler.until(lambda: a.handler.restored == 1)
    assert await a.bus.publish("user:1", b"up") == 1
    await a.handler.until(lambda: a.handler.on("user:1") == [b"up"])


@pytest.mark.integration
async def test_closed_bus_refuses_publishes(
    redis_server: RedisServer, admin: Redis, redis_node: Callable[..., Awaitable[Node]]
) -> None:
    """close() releases both connections; publishing afterwards raises BusError."""
    a = await redis_node(redis_server, "a")
    assert await a.bus.publish("user:1", b"x") == 0
    await a.bus.close()
    with pytest.raises(BusError):
        await a.bus.publish("user:1", b"y")

    async def released() -> bool:
        return await connected_clients(admin) == 1

    await poll(released)
