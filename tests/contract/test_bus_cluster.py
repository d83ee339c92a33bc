"""RedisClusterBus on a real Redis Cluster: slots, shards, failover and slot moves.

The contract itself runs in test_bus.py (``redis-cluster``); these tests check
what only a cluster has: resubscriptions batched one SSUBSCRIBE per slot on
the slot's primary, each publication touching one shard, a primary SIGKILLed
and replaced by its replica, and a slot moved to another primary (the server
unsubscribes us, publishes are answered ``-MOVED``).
"""

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from clusterchat.bus.channels import ChannelNames
from clusterchat.bus.redis_cluster import RedisClusterBus
from clusterchat.bus.slots import slot_of
from tests.contract.test_bus import FAST, Recorder
from tests.support.defaults import bus_timing
from tests.support.redis_cluster import ClusterNode, RedisCluster
from tests.support.timing import seconds

pytestmark = pytest.mark.integration  # every test here starts a Redis Cluster

WAIT = seconds(20)  # a failover takes cluster-node-timeout (1 s) plus an election


class Started:
    """A RedisClusterBus with its recorder."""

    def __init__(self, bus: RedisClusterBus, handler: Recorder) -> None:
        self.bus = bus
        self.handler = handler

    async def join(self, channel: str) -> None:
        self.handler.channels.add(channel)
        await self.bus.subscribe(channel)


BusFactory = Callable[..., Awaitable[Started]]


async def eventually(
    condition: Callable[[], bool], what: str, within: float = WAIT, *, blocking: bool = False
) -> None:
    """Poll ``condition`` every 50 ms (in a thread if ``blocking``: it runs redis-cli);
    fail naming ``what`` after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while True:
                if await asyncio.to_thread(condition) if blocking else condition():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {within}s: {what}") from None


@pytest.fixture
async def cluster_bus() -> AsyncIterator[BusFactory]:
    """``await cluster_bus(cluster, "a", channels=..., **options)``; closed at teardown."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    started: list[Started] = []

    async def make(
        cluster: RedisCluster, node_id: str, channels: set[str] | None = None, **options: Any
    ) -> Started:
        handler = Recorder()
        handler.channels.update(channels or ())
        bus = RedisClusterBus(cluster.url, node_id=node_id, prefix=prefix, **bus_timing(**options))
        await bus.start(handler)
        assert bus.connected
        one = Started(bus, handler)
        started.append(one)
        return one

    yield make
    for one in started:
        await one.bus.close()


def names(prefix: str) -> ChannelNames:
    return ChannelNames(prefix, hash_tag=True)


def channels_by_slot(per_slot: int, slots: int) -> dict[int, list[str]]:
    """``slots`` slots, each with ``per_slot`` bare user channels that hash to it."""
    found: dict[int, list[str]] = defaultdict(list)
    for user in range(1, 2_000_000):
        bare = f"user:{user}"
        found[slot_of(bare)].append(bare)
        full = [s for s, chans in found.items() if len(chans) >= per_slot]
        if len(full) >= slots:
            return {s: found[s][:per_slot] for s in full[:slots]}
    raise AssertionError("not enough colliding channels")  # pragma: no cover


def stat(node: ClusterNode, section: str, name: str, field: str = "calls") -> int:
    """One counter of ``INFO section`` (0 when absent), e.g. ``cmdstat_ssubscribe`` calls."""
    value = node.info(section).get(name)
    if value is None:
        return 0
    if "=" not in value:
        return int(value)
    return int(dict(item.split("=") for item in value.split(","))[field])


async def test_resubscription_is_one_ssubscribe_per_slot_on_the_slots_primary(
    shared_redis_cluster: RedisCluster, cluster_bus: BusFactory
) -> None:
    """18 channels in 6 slots: each primary gets one SSUBSCRIBE per slot it serves, no refusal."""
    cluster = shared_redis_cluster
    grouped = channels_by_slot(per_slot=3, slots=6)
    wanted = {c for chans in grouped.values() for c in chans}
    primaries = await asyncio.to_thread(cluster.primaries)
    before = {
        p.port: await asyncio.to_thread(stat, p, "commandstats", "cmdstat_ssubscribe")
        for p in primaries
    }
    moved_before = {
        p.port: await asyncio.to_thread(stat, p, "errorstats", "errorstat_MOVED", "count")
        for p in primaries
    }
    a = await cluster_bus(cluster, "a", channels=wanted)
    prefix = names(a.bus._names.prefix)  # the fixture's prefix

    # Node channel and one probe channel per primary are ours too.
    ours = {prefix.full(c) for c in wanted} | {prefix.full("node:a")}
    owners = {p.port: p for p in primaries}
    expected_slots: dict[int, set[int]] = defaultdict(set)
    for full in ours:
        owner = await asyncio.to_thread(cluster.owner, slot_of(full))
        expected_slots[owner.port].add(slot_of(full))
    for port, primary in owners.items():
        calls = await asyncio.to_thread(stat, primary, "commandstats", "cmdstat_ssubscribe")
        # One command per slot, plus the probe channel's (sent alone, last).
        assert calls - before[port] == len(expected_slots[port]) + 1, port
        moved = await asyncio.to_thread(stat, primary, "errorstats", "errorstat_MOVED", "count")
        assert moved == moved_before[port]
        listed = await asyncio.to_thread(
            primary.cli, "PUBSUB", "SHARDCHANNELS", f"{a.bus._names.prefix}:*"
        )
        got = set(listed.split())
        assert {c for c in got if ":{probe:" not in c} == {
            c for c in ours if slot_of(c) in expected_slots[port]
        }
    assert len(expected_slots) == len(primaries)  # the channels span every shard


async def test_each_publication_touches_one_shard(
    shared_redis_cluster: RedisCluster, cluster_bus: BusFactory
) -> None:
    """50 publishes to one channel: 50 SPUBLISH on its primary, none elsewhere, only its shard."""
    cluster = shared_redis_cluster
    quiet = {"probe_interval": 600.0}  # no probes while counting
    a = await cluster_bus(cluster, "a", **quiet)
    b = await cluster_bus(cluster, "b", **quiet)
    await a.join("user:7")
    full = a.bus._names.full("user:7")
    owner = await asyncio.to_thread(cluster.owner, slot_of(full))
    replica = await asyncio.to_thread(cluster.replica_of, owner)
    nodes = await asyncio.to_thread(cluster.live)

    def counters() -> dict[int, tuple[int, int]]:
        return {
            n.port: (
                stat(n, "commandstats", "cmdstat_spublish"),
                stat(n, "cluster-info", "cluster_stats_messages_publishshard_received")
                + stat(n, "cluster-info", "cluster_stats_messages_publish_received"),
            )
            for n in nodes
        }

    before = await asyncio.to_thread(counters)
    counts = await asyncio.gather(*(b.bus.publish("user:7", b"%d" % i) for i in range(50)))
    assert counts == [1] * 50
    await a.handler.until(lambda: len(a.handler.on("user:7")) == 50)
    after = await asyncio.to_thread(counters)
    for node in nodes:
        spublish = after[node.port][0] - before[node.port][0]
        received = after[node.port][1] - before[node.port][1]
        assert spublish == (50 if node is owner else 0), node.port
        # Propagated to the shard's replica only (classic PUBLISH reaches every node).
        assert received == (50 if node is replica else 0), node.port


async def test_primary_sigkilled_replica_takes_over_and_the_bus_follows(
    redis_cluster: RedisCluster, cluster_bus: BusFactory
) -> None:
    """A primary killed: publishes fail meanwhile, then the bus resubscribes and restores once."""
    cluster = redis_cluster
    grouped = channels_by_slot(per_slot=1, slots=30)
    wanted = {chans[0] for chans in grouped.values()}
    a = await cluster_bus(cluster, "a", channels=wanted, **FAST)
    b = await cluster_bus(cluster, "b", **FAST)
    victim = await asyncio.to_thread(cluster.owner, slot_of(sorted(wanted)[0]))
    replica = await asyncio.to_thread(cluster.replica_of, victim)
    await asyncio.to_thread(cluster.kill, victim)

    await eventually(
        lambda: a.handler.restored >= 1 and b.handler.restored >= 1, "both buses restored"
    )
    assert ("127.0.0.1", replica.port) in a.bus.primaries
    assert ("127.0.0.1", victim.port) not in a.bus.primaries
    for channel in sorted(wanted):
        assert await b.bus.publish(channel, channel.encode()) == 1, channel
    await a.handler.until(lambda: len(a.handler.messages) == len(wanted))
    assert sorted(a.handler.messages) == sorted((c, c.encode()) for c in wanted)
    await a.bus.barrier()
    assert a.handler.restored == 1


async def test_primary_frozen_past_the_node_timeout_is_replaced_and_followed(
    redis_cluster: RedisCluster, cluster_bus: BusFactory
) -> None:
    """SIGSTOP a primary for longer than cluster-node-timeout: the probe notices, the replica
    takes over, the bus follows it; after SIGCONT (the old primary now a replica) it still works."""
    cluster = redis_cluster
    a = await cluster_bus(cluster, "a", **FAST)
    b = await cluster_bus(cluster, "b", **FAST)
    await a.join("user:7")
    victim = await asyncio.to_thread(cluster.owner, slot_of(a.bus._names.full("user:7")))
    replica = await asyncio.to_thread(cluster.replica_of, victim)
    cluster.pause(victim)
    try:
        await eventually(lambda: not a.bus.connected, "the probe to notice the freeze")
        await eventually(
            lambda: cluster.promoted(replica), "the replica to take over", blocking=True
        )
        # Publishes meanwhile may fail (BusError: the caller announces them again later).
        await eventually(
            lambda: a.handler.restored >= 1 and b.handler.restored >= 1, "both buses restored"
        )
        assert await b.bus.publish("user:7", b"while frozen") == 1
    finally:
        cluster.resume(victim)
    await eventually(
        lambda: victim.info("replication").get("role") == "slave", "demotion", blocking=True
    )
    assert await b.bus.publish("user:7", b"after thaw") == 1
    await a.handler.until(lambda: a.handler.on("user:7") == [b"while frozen", b"after thaw"])
    assert ("127.0.0.1", victim.port) not in a.bus.primaries


async def test_slot_moved_to_another_primary_is_followed(
    redis_cluster: RedisCluster, cluster_bus: BusFactory
) -> None:
    """A slot moved: Redis unsubscribes us, the bus resubscribes at the new owner,
    and a publish routed to the old owner follows its -MOVED."""
    cluster = redis_cluster
    a = await cluster_bus(cluster, "a", **FAST)
    b = await cluster_bus(cluster, "b", **FAST)
    await a.join("user:7")
    assert await b.bus.publish("user:7", b"before") == 1
    slot = slot_of("user:7")
    old = await asyncio.to_thread(cluster.owner, slot)
    new = next(p for p in await asyncio.to_thread(cluster.primaries) if p is not old)
    new_id = (await asyncio.to_thread(new.cli, "CLUSTER", "MYID")).strip()
    # An empty slot moves at once: assign it on the new owner, then everywhere else.
    for node in [new, old, *(n for n in cluster.live() if n not in (new, old))]:
        await asyncio.to_thread(node.cli, "CLUSTER", "SETSLOT", str(slot), "NODE", new_id)

    await eventually(lambda: a.handler.restored >= 1, "the bus restored")
    # b's publisher still routes the slot to the old owner: -MOVED, followed.
    assert await b.bus.publish("user:7", b"after") == 1
    await a.handler.until(lambda: a.handler.on("user:7") == [b"before", b"after"])
    moved = await asyncio.to_thread(stat, old, "errorstats", "errorstat_MOVED", "count")
    assert moved >= 1
