"""Storms against a 2-node cluster while other users chat (issue: hostile clients).

Each storm runs beside two users who chat across the nodes; the test checks
that the storm's own clients are served (slower, never refused for the
node's own limits), that every chat message arrives, and that presence and
subscriptions end exactly right. Chat latency during the storm is printed,
not asserted (benchmarks measure speed; docs/security.md quotes the figures).
"""

import asyncio
import functools
import statistics
import time

import pytest

from tests.support.classic import PASSWORD
from tests.support.node import NodeFactory, NodeHandle
from tests.support.redis import RedisServer
from tests.support.timing import seconds
from tests.support.wire import Net, Peer, start_nodes

pytestmark = pytest.mark.integration

#: Users of a storm, spread over this many source addresses (connection
#: limits per address stay at their defaults).
ADDRESSES = 40
#: The shipped password hashing cost (other tests' nodes hash cheaply): a login
#: storm is a storm of hashes.
DEFAULT_HASHING = {"CLUSTERCHAT_ARGON2_TIME_COST": "2", "CLUSTERCHAT_ARGON2_MEMORY_KIB": "19456"}


def _source(index: int) -> str:
    return f"127.0.{1 + index % ADDRESSES}.{1 + index // ADDRESSES % 200}"


async def _chat_beside(
    sender: Peer, receiver: Peer, receiver_id: int, stop: asyncio.Event
) -> list[float]:
    """Send one message every 20 ms until ``stop``; return each one's latency in ms."""
    latencies: list[float] = []
    index = 0
    while not stop.is_set():
        started = time.perf_counter()
        key = f"beside:{index}"
        await sender.send({"msgid": 6, "toid": receiver_id, "msg": key})
        await receiver.until(
            functools.partial(set.__contains__, receiver.seen, key), key, seconds(60)
        )
        latencies.append((time.perf_counter() - started) * 1000)
        index += 1
        await asyncio.sleep(0.02)
    return latencies


def _report(name: str, latencies: list[float]) -> None:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"{name}: {len(ordered)} chat messages beside it, "
        f"p50 {statistics.median(ordered):.1f} ms, p99 {p99:.1f} ms, max {ordered[-1]:.1f} ms"
    )


async def test_2000_parallel_logins_all_succeed_while_chat_goes_on(
    node_factory: NodeFactory, redis_server: RedisServer, net: Net
) -> None:
    """On main: the database pool ran out (errno 50 for 335 of 2,000), a user waited 50.6 s."""
    storm = 2000
    nodes = await start_nodes(node_factory, redis_server, 2, env=DEFAULT_HASHING)
    # Registered over 20 connections at once (each a full hash at the shipped cost).
    names = ["sender", "receiver", *(f"s{i}" for i in range(storm))]
    chunks = [names[start::20] for start in range(20)]
    registered = await asyncio.gather(
        *(net.register(nodes[i % 2], *chunk) for i, chunk in enumerate(chunks))
    )
    by_name = {
        n: user
        for chunk, ids in zip(chunks, registered, strict=True)
        for n, user in zip(chunk, ids, strict=True)
    }
    ids = [by_name[name] for name in names]
    sender = await net.login(nodes[0], ids[0])
    receiver = await net.login(nodes[1], ids[1])

    async def one_login(index: int) -> dict[str, object]:
        node: NodeHandle = nodes[index % 2]
        peer = await net.connect(node, source=_source(index))
        frame = {"msgid": 1, "id": ids[2 + index], "password": PASSWORD}
        return await peer.request(frame, within=seconds(300))

    stop = asyncio.Event()
    beside = asyncio.create_task(_chat_beside(sender, receiver, ids[1], stop))
    started = time.perf_counter()
    answers = await asyncio.gather(*(one_login(i) for i in range(storm)))
    took = time.perf_counter() - started
    stop.set()
    latencies = await beside
    refused = [a for a in answers if a.get("errno") != 0]
    assert not refused, f"{len(refused)} of {storm} refused, first {refused[:3]}"
    print(f"{storm} parallel logins over 2 nodes in {took:.1f} s")
    _report("login storm", latencies)
    assert latencies, "no chat message went through during the storm"
