"""The bus: cross-node delivery of opaque payloads to named channels.

Contract (every implementation, checked by tests/contract/test_bus.py):

* ``publish(channel, payload)`` returns how many nodes the backend handed
  the payload to, or fails with ``BusError``. Delivery is at most once: a
  receiver may still lose it (Redis cuts a slow subscriber, a node dies), so
  callers treat the bus as a fast path and keep the truth elsewhere (the
  service's log, ARCHITECTURE.md delivery rule 2). A node subscribed to the
  channel receives its own publications too; the caller tells them apart.
* ``subscribe`` / ``unsubscribe`` never raise because the backend is down;
  while it is down they only take effect once it is back.
* Every payload published to a channel the node is subscribed to is handed to
  ``BusHandler.on_bus_message`` once, in publication order per channel, on the
  event loop, never concurrently. The handler must not block: it hands off.
* After an outage (connection lost, or the liveness probe saw nothing), the
  bus reconnects with back-off, subscribes to ``BusHandler.bus_channels()``
  (the node's session registry is the truth, not the bus's memory), and then
  calls ``BusHandler.on_bus_restored()``, so the node can read what it may
  have missed meanwhile.

Channel names here are bare (``user:42``); an implementation adds its own
prefix so that several clusters can share one backend.
"""

import asyncio
from collections.abc import Iterable
from typing import Protocol

__all__ = ["Bus", "BusError", "BusHandler"]


class BusError(Exception):
    """A publish did not reach the backend: no node received it."""


class BusHandler(Protocol):
    """What the bus calls back into (implemented by the chat service)."""

    def on_bus_message(self, channel: str, payload: bytes) -> None:
        """A payload arrived on a subscribed channel. Must return quickly."""

    def bus_channels(self) -> Iterable[str]:
        """The channels this node must be subscribed to right now."""

    def on_bus_restored(self) -> None:
        """The bus is back after an outage and resubscribed; read what was missed."""


class Bus(Protocol):
    """Cross-node delivery. See the module docstring for the guarantees."""

    async def start(self, handler: BusHandler) -> None:
        """Connect and start delivering to ``handler``."""

    async def close(self) -> None:
        """Stop listening and release every connection."""

    async def subscribe(self, channel: str) -> None:
        """Receive what is published to ``channel`` from now on."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``."""

    async def barrier(self) -> None:
        """Return once everything published before the call to a channel this
        node is subscribed to has been handed to the handler.

        Raises:
            BusError: the backend is unreachable.
        """

    def publish(self, channel: str, payload: bytes) -> "asyncio.Future[int]":
        """Send ``payload`` to every node subscribed to ``channel``.

        A plain method returning a future, so that no task is created per
        message and the caller can attach a callback; publications leave in
        the order of the calls.

        Returns:
            A future of how many nodes received it (this one included, if
            subscribed).

        Raises:
            BusError: (from the future) the backend is unreachable; nobody
                received it.
        """
        ...
