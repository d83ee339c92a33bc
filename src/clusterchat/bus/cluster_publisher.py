"""ClusterPublisher: SPUBLISH routed to the primary of each channel's slot.

The publishing half of ``RedisClusterBus``: one ``RedisPublisher`` (one
pipelined connection, see ``clusterchat.bus.redis_publisher``) per primary,
created on first use. ``publish()`` hashes the channel to its slot, looks the
owner up in the slot map the bus gave it (``set_map``) and hands the command
to that primary's publisher, so each message touches exactly one shard and
everything published to one primary in one loop turn still leaves in one
write.

Redirections (the map is older than the cluster):

* ``-MOVED <slot> <host:port>``: the slot's owner changed. The map is patched
  for that slot, ``on_moved(slot, address)`` tells the bus (which checks its
  subscriptions), and the publication is sent again to the new owner. Redis
  refused it without delivering it, so nobody receives it twice.
* ``-ASK <slot> <host:port>``: the slot is being migrated; the publication
  is sent once to the target, preceded by ``ASKING``; the map is unchanged.

At most ``_MAX_REDIRECTS`` redirections per publication, then ``BusError``.
A publication sent again after a redirection may arrive after a later one to
the same channel that went straight to the new owner: receivers order by the
log's positions, not by arrival (docs/delivery.md). Everything else
(``CLUSTERDOWN``, ``TRYAGAIN``, a lost connection, a slot with no primary)
fails the publication with ``BusError`` and the caller publishes it again
later, as on a single Redis.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable

from clusterchat.bus.base import BusError
from clusterchat.bus.redis_publisher import PublishRefusedError, RedisPublisher
from clusterchat.bus.slots import Address, SlotMap, slot_of
from clusterchat.redis_url import ClusterUrl

__all__ = ["ClusterPublisher"]

log = logging.getLogger("clusterchat.bus")

_MAX_REDIRECTS = 3


def _redirect(exc: BaseException | None) -> tuple[str, int, Address] | None:
    """``("MOVED"|"ASK", slot, address)`` from a refused publish, else None."""
    if not isinstance(exc, PublishRefusedError):
        return None
    parts = exc.reply.split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK") or not parts[1].isdigit():
        return None
    host, _, port = parts[2].rpartition(":")
    if not host or not port.isdigit():
        return None
    return parts[0], int(parts[1]), (host.strip("[]"), int(port))


class ClusterPublisher:
    """Routes each SPUBLISH to its slot's primary; see the module docstring.

    Args:
        cluster: The parsed cluster URL (credentials for every node).
        client_name: CLIENT SETNAME of every publisher connection.
        timeout: Bound on connecting, and on waiting for any one reply.
        on_moved: Called with ``(slot, new owner)`` on every ``-MOVED``.
    """

    def __init__(
        self,
        cluster: ClusterUrl,
        *,
        client_name: str,
        timeout: float,
        on_moved: Callable[[int, Address], None],
    ) -> None:
        self._cluster = cluster
        self._client_name = client_name
        self._timeout = timeout
        self._on_moved = on_moved
        self._owners: list[Address | None] | None = None
        self._publishers: dict[Address, RedisPublisher] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def set_map(self, slot_map: SlotMap) -> None:
        """Route by ``slot_map`` from now on; close publishers of nodes that are no primary."""
        self._owners = list(slot_map.owners)
        for address in set(self._publishers) - set(slot_map.primaries):
            self._close_later(
                self._publishers.pop(address), f"{address[0]}:{address[1]} is no primary"
            )

    def publish(self, channel: str, payload: bytes) -> asyncio.Future[int]:
        """SPUBLISH ``payload`` on the shard serving ``channel``.

        Args:
            channel: The full (hash-tagged) channel name.
            payload: Opaque bytes.

        Returns:
            A future of the receiver count on that shard, or ``BusError``.
        """
        outer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._send(channel, payload, outer, None, 0)
        return outer

    def mark_stale(self, addresses: Iterable[Address]) -> None:
        """Drop the connections to these primaries now (their subscriber connection was lost)."""
        for address in addresses:
            publisher = self._publishers.get(address)
            if publisher is not None:
                publisher.mark_stale()

    async def close(self) -> None:
        """Fail whatever is outstanding and close every connection."""
        self._closed = True
        publishers, self._publishers = list(self._publishers.values()), {}
        for publisher in publishers:
            await publisher.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- routing ---------------------------------------------------------------------

    def _send(
        self,
        channel: str,
        payload: bytes,
        outer: asyncio.Future[int],
        ask: Address | None,
        redirects: int,
    ) -> None:
        if self._closed:
            outer.set_exception(BusError("bus closed"))
            return
        if ask is not None:
            address: Address | None = ask
        elif self._owners is None:
            outer.set_exception(BusError("no slot map yet (cluster unreachable)"))
            return
        else:
            address = self._owners[slot_of(channel)]
        if address is None:
            outer.set_exception(BusError(f"no primary serves the slot of {channel}"))
            return
        inner = self._publisher(address).publish(channel, payload, asking=ask is not None)
        inner.add_done_callback(lambda done: self._settle(done, channel, payload, outer, redirects))

    def _settle(
        self,
        inner: asyncio.Future[int],
        channel: str,
        payload: bytes,
        outer: asyncio.Future[int],
        redirects: int,
    ) -> None:
        exc = None if inner.cancelled() else inner.exception()  # retrieved, whatever comes
        if outer.done():  # the caller gave up (e.g. a probe's timeout cancelled it)
            return
        if inner.cancelled():
            outer.set_exception(BusError("publish cancelled"))
            return
        if exc is None:
            outer.set_result(inner.result())
            return
        redirect = _redirect(exc)
        if redirect is None or redirects >= _MAX_REDIRECTS:
            outer.set_exception(exc)
            return
        kind, slot, address = redirect
        if kind == "ASK":
            self._send(channel, payload, outer, address, redirects + 1)
            return
        if self._owners is not None and self._owners[slot] != address:
            self._owners[slot] = address
            log.info("bus: slot %d moved to %s:%d", slot, *address)
            self._on_moved(slot, address)
        self._send(channel, payload, outer, None, redirects + 1)

    def _publisher(self, address: Address) -> RedisPublisher:
        publisher = self._publishers.get(address)
        if publisher is None:
            publisher = RedisPublisher(
                self._cluster.node_url(address),
                client_name=self._client_name,
                timeout=self._timeout,
                command="SPUBLISH",
            )
            self._publishers[address] = publisher
        return publisher

    def _close_later(self, publisher: RedisPublisher, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(publisher.close(reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
