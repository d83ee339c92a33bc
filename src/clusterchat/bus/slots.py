"""The slot map of a Redis Cluster: which primary serves which hash slot.

Redis Cluster splits the key (and sharded channel) space into 16,384 hash
slots: a name's slot is CRC16 of its hash tag (the part inside the first
``{...}``, or the whole name) modulo 16,384. Every slot is served by one
primary; sharded pub/sub (SPUBLISH/SSUBSCRIBE) for a channel happens on the
shard that serves the channel's slot, and an SSUBSCRIBE with several channels
must name channels of one slot.

``fetch_slot_map`` asks ``CLUSTER SHARDS`` (Redis >= 7.0, as sharded pub/sub
itself) of the first node that answers and keeps, per shard, the primary
whose health is ``online``. A map is *complete* when every slot has one.
"""

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from clusterchat.bus.redis_publisher import FAILURES, NO_DRIVER_INFO, aclose_quietly
from clusterchat.redis_url import ClusterUrl

__all__ = ["SLOTS", "Address", "SlotMap", "fetch_slot_map", "slot_of"]

SLOTS = 16384

Address = tuple[str, int]


def slot_of(name: str) -> int:
    """The hash slot of a key or sharded channel name (hash tags respected)."""
    return key_slot(name.encode())


@dataclass(frozen=True)
class SlotMap:
    """Slot -> serving primary, and every node the cluster named.

    Attributes:
        owners: For each slot, the ``(host, port)`` of its primary, or None.
        nodes: Every node listed (primaries and replicas), to ask next time.
    """

    owners: tuple[Address | None, ...]
    nodes: tuple[Address, ...]

    @property
    def complete(self) -> bool:
        """Whether every slot has a primary."""
        return None not in self.owners

    @property
    def primaries(self) -> list[Address]:
        """The distinct primaries, sorted."""
        return sorted({owner for owner in self.owners if owner is not None})

    def owner(self, slot: int) -> Address | None:
        """The primary serving ``slot``, or None."""
        return self.owners[slot]

    def by_owner(self, names: Iterable[str]) -> dict[Address | None, dict[int, list[str]]]:
        """Group channel names by serving primary, then by slot (each list keeps input order)."""
        grouped: dict[Address | None, dict[int, list[str]]] = {}
        for name in names:
            slot = slot_of(name)
            grouped.setdefault(self.owners[slot], {}).setdefault(slot, []).append(name)
        return grouped


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def parse_shards(reply: Sequence[Any]) -> SlotMap:
    """Build a map from a RESP2 ``CLUSTER SHARDS`` reply.

    Raises:
        ValueError: The reply does not have the documented shape.
    """
    owners: list[Address | None] = [None] * SLOTS
    nodes: list[Address] = []
    try:
        for shard in reply:
            fields = _pairs(shard)
            primary: Address | None = None
            for node in fields["nodes"]:
                info = _pairs(node)
                address = (_text(info.get("endpoint") or info["ip"]), int(info["port"]))
                nodes.append(address)
                if _text(info["role"]) == "master" and _text(info["health"]) == "online":
                    primary = address
            ranges = [int(x) for x in fields["slots"]]
            for start, end in zip(ranges[::2], ranges[1::2], strict=True):
                for slot in range(start, end + 1):
                    owners[slot] = primary
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"unexpected CLUSTER SHARDS reply: {exc!r}") from None
    return SlotMap(tuple(owners), tuple(dict.fromkeys(nodes)))


async def fetch_slot_map(
    cluster: ClusterUrl, candidates: Sequence[Address], *, node_timeout: float
) -> SlotMap:
    """Ask the candidates in turn for ``CLUSTER SHARDS``; return the first complete map.

    Args:
        cluster: Credentials (and seeds, asked after ``candidates``).
        candidates: Nodes to ask first (e.g. those of the previous map).
        node_timeout: Bound on each node's connect and answer.

    Raises:
        ConnectionError: No node answered with a complete map (a shard without a
            primary, e.g. during a failover, or every node unreachable).
    """
    last = "no node to ask"
    for address in dict.fromkeys([*candidates, *cluster.seeds]):
        client = Redis.from_url(
            cluster.node_url(address),
            socket_timeout=node_timeout,
            socket_connect_timeout=node_timeout,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
            **NO_DRIVER_INFO,
        )
        try:
            async with asyncio.timeout(node_timeout):
                reply = await client.execute_command("CLUSTER", "SHARDS")  # type: ignore[no-untyped-call]
            slot_map = parse_shards(reply)
        except (*FAILURES, ValueError) as exc:
            last = f"{address[0]}:{address[1]}: {exc!r}"
            continue
        finally:
            await aclose_quietly(client)
        if slot_map.complete:
            return slot_map
        last = f"{address[0]}:{address[1]}: some slots have no online primary"
    raise ConnectionError(f"no complete slot map ({last})")
