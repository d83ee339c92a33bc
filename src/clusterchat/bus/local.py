"""LocalBus: the in-process bus of a single node (or of several nodes in one test process).

Nodes that share one ``LocalHub`` see each other's publications, which lets
the service tests run multi-node scenarios without Redis. A lone node gets its
own hub.
"""

import asyncio
from collections import defaultdict

from clusterchat.bus.base import Bus, BusError, BusHandler

__all__ = ["LocalBus", "LocalHub"]


class LocalHub:
    """The shared medium of ``LocalBus`` instances. ``down`` simulates nothing: it is
    a real switch for in-process outages in unit tests of the service."""

    def __init__(self) -> None:
        self.subscribers: defaultdict[str, set[LocalBus]] = defaultdict(set)
        self.down = False


class LocalBus:
    """Delivers synchronously to every subscribed ``LocalBus`` on the same hub."""

    def __init__(self, hub: LocalHub | None = None) -> None:
        self._hub = hub or LocalHub()
        self._handler: BusHandler | None = None
        self._channels: set[str] = set()

    async def start(self, handler: BusHandler) -> None:
        self._handler = handler

    async def close(self) -> None:
        for channel in list(self._channels):
            await self.unsubscribe(channel)
        self._handler = None

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self._hub.subscribers[channel].add(self)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        subscribers = self._hub.subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(self)
            if not subscribers:
                del self._hub.subscribers[channel]

    async def barrier(self) -> None:
        """Nothing to wait for: a publication reaches every handler before ``publish`` returns."""
        if self._hub.down:
            raise BusError("local hub is down")

    def publish(self, channel: str, payload: bytes) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self._hub.down:
            future.set_exception(BusError("local hub is down"))
            return future
        receivers = list(self._hub.subscribers.get(channel, ()))
        for bus in receivers:
            if bus._handler is not None:
                bus._handler.on_bus_message(channel, payload)
        future.set_result(len(receivers))
        return future

    def restore(self) -> None:
        """Tell the handler the bus is back (for outage tests with ``LocalHub.down``)."""
        if self._handler is not None:
            for channel in self._handler.bus_channels():
                self._hub.subscribers[channel].add(self)
            self._handler.on_bus_restored()


_: type[Bus] = LocalBus
