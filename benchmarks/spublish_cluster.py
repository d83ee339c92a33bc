"""SPUBLISH throughput to a Redis Cluster: our slot router against redis-py and coredis.

Run from the repository root (``PYTHONPATH=src:.`` so that the test fixture
can start a cluster)::

    .venv/bin/python benchmarks/spublish_cluster.py [--messages 30000] [--window 1000]
    .venv/bin/python benchmarks/spublish_cluster.py --url redis+cluster://127.0.0.1:7000

Without ``--url`` it starts a private 3-primary, 3-replica cluster
(``tests/support/redis_cluster.py``) and stops it at the end. Each client
publishes ``--messages`` payloads of 100 bytes to 1,000 user channels
(hash-tagged, so spread over every shard), ``--window`` at a time: that many
publishes are issued in one event-loop turn, then awaited, as a busy node does.
Every client runs ``--runs`` times; the median messages per
second is printed. coredis is
measured only if installed (``pip install coredis``). Figures compare clients
on one machine (docs/cluster.md quotes them); no test asserts on them.
"""

import argparse
import asyncio
import importlib
import importlib.util
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as PyRedisCluster

from clusterchat.bus.cluster_publisher import ClusterPublisher
from clusterchat.bus.slots import fetch_slot_map
from clusterchat.redis_url import ClusterUrl, parse_cluster_url

__all__ = ["main"]

CHANNELS = [f"bench:{{user:{i}}}" for i in range(1000)]
PAYLOAD = b"x" * 100

Publish = Callable[[list[str]], Awaitable[None]]
Session = Callable[[ClusterUrl, int], AbstractAsyncContextManager[Publish]]


@asynccontextmanager
async def _ours(cluster: ClusterUrl, window: int) -> AsyncIterator[Publish]:
    publisher = ClusterPublisher(
        cluster, client_name="bench-ours", timeout=10.0, on_moved=lambda s, a: None
    )
    publisher.set_map(await fetch_slot_map(cluster, (), node_timeout=5.0))

    async def publish(channels: list[str]) -> None:
        await asyncio.gather(*[publisher.publish(ch, PAYLOAD) for ch in channels])

    try:
        yield publish
    finally:
        await publisher.close()


def _redis_py(pipelined: bool) -> Session:
    @asynccontextmanager
    async def session(cluster: ClusterUrl, window: int) -> AsyncIterator[Publish]:
        # Its default pool (100 connections a node) raises MaxConnectionsError as soon
        # as more than 100 publishes to one node are in flight: one per publish here.
        client = PyRedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in cluster.seeds],
            max_connections=window + 10,
            driver_info=None,
        )
        await client.initialize()

        async def publish(channels: list[str]) -> None:
            if pipelined:
                pipe = client.pipeline(transaction=False)
                for ch in channels:
                    pipe.spublish(ch, PAYLOAD)
                await pipe.execute()
            else:
                await asyncio.gather(*[client.spublish(ch, PAYLOAD) for ch in channels])

        try:
            yield publish
        finally:
            await client.aclose()

    return session


def _coredis(pipelined: bool) -> Session:
    @asynccontextmanager
    async def session(cluster: ClusterUrl, window: int) -> AsyncIterator[Publish]:
        coredis: Any = importlib.import_module("coredis")  # optional: not a dependency
        nodes = [{"host": h, "port": p} for h, p in cluster.seeds]
        client: Any = coredis.RedisCluster(startup_nodes=nodes)
        async with client:

            async def publish(channels: list[str]) -> None:
                if pipelined:
                    async with client.pipeline(transaction=False) as pipe:
                        for ch in channels:
                            pipe.spublish(ch, PAYLOAD)
                else:
                    await asyncio.gather(*[client.spublish(ch, PAYLOAD) for ch in channels])

            yield publish

    return session


async def _run(publish: Publish, messages: int, window: int) -> float:
    channels = [CHANNELS[i % len(CHANNELS)] for i in range(messages)]
    started = time.perf_counter()
    for start in range(0, messages, window):
        await publish(channels[start : start + window])
    return messages / (time.perf_counter() - started)


async def _measure(url: str, messages: int, window: int, runs: int) -> dict[str, float]:
    cluster = parse_cluster_url(url)
    sessions: dict[str, Session] = {
        "clusterchat ClusterPublisher": _ours,
        "redis-py RedisCluster, spublish per message": _redis_py(False),
        "redis-py RedisCluster, pipeline per window": _redis_py(True),
    }
    if importlib.util.find_spec("coredis") is not None:
        sessions["coredis RedisCluster, spublish per message"] = _coredis(False)
        sessions["coredis RedisCluster, pipeline per window"] = _coredis(True)
    figures: dict[str, float] = {}
    for name, session in sessions.items():
        async with session(cluster, window) as publish:
            await _run(publish, window, window)  # warm up: connections, slot map
            rates = [await _run(publish, messages, window) for _ in range(runs)]
        figures[name] = statistics.median(rates)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="redis+cluster:// URL (default: start a private cluster)")
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cluster = None
    url = args.url
    if url is None:
        from tests.support.redis_cluster import start_cluster

        cluster = start_cluster(Path(tempfile.mkdtemp(prefix="spublish-bench-")))
        url = cluster.url
    try:
        figures = asyncio.run(_measure(url, args.messages, args.window, args.runs))
    finally:
        if cluster is not None:
            cluster.stop_all()
    best = figures["clusterchat ClusterPublisher"]
    print(f"{args.messages} SPUBLISH of 100 B, window {args.window}, median of {args.runs}")
    for name, rate in figures.items():
        print(f"  {name:<48} {rate:>9,.0f} msg/s  ({rate / best:.2f}x ours)")


if __name__ == "__main__":
    main()
