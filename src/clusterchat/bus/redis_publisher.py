"""RedisPublisher: one pipelined round trip per event-loop turn, over one connection.

The publishing half of ``RedisBus`` (see the theory of operation in
``clusterchat.bus.redis``). ``publish()`` appends to a queue and awaits its
own future. The first publish of a loop turn starts the **flusher** task; by
the time it runs, every publish of that turn is queued, and it sends them all
as one pipeline (``transaction=False``). Publishes made while a pipeline is in
flight form the next one. A lone publish waits for nothing but its own round
trip. Each caller gets its own reply (the receiver count).

Only the flusher touches the client, and batches never overlap, so one
connection suffices: no pool to exhaust (FIELD-NOTES: redis-py's 100-connection
limit). A failed or timed-out round trip fails every publish of its batch with
``BusError`` and drops the client (``aclose()``, no leaked socket); the next
batch connects afresh. No retries: a PUBLISH may have been delivered before
the connection broke, and the caller stores what failed.

Also home of the small helpers the Redis bus modules share.
"""

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from clusterchat.bus.base import BusError

__all__ = ["FAILURES", "NO_DRIVER_INFO", "RedisPublisher", "aclose_quietly"]

log = logging.getLogger("clusterchat.bus")

FAILURES = (RedisError, OSError)
"""What a Redis round trip raises when Redis is unreachable (OSError includes TimeoutError)."""

# redis-py >= 7.2 builds a DriverInfo for every new connection, reading package
# metadata from disk (a blocking os.stat in the event loop), then sends CLIENT
# SETINFO. driver_info=None skips both; older versions read it once, at import.
NO_DRIVER_INFO: dict[str, Any] = (
    {"driver_info": None} if importlib.util.find_spec("redis.driver_info") else {}
)
"""Keyword arguments for every Redis client we build."""

_MAX_PIPELINE = 1000
_CLOSE_TIMEOUT = 1.0


async def aclose_quietly(client: Redis) -> None:
    """``aclose()`` a client, bounded in time; failures are logged at DEBUG, not raised."""
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await client.aclose()
    except FAILURES as exc:
        log.debug("bus: closing a client failed: %r", exc)


@dataclass(eq=False)
class _Outgoing:
    """One queued publication and the future its caller awaits."""

    channel: str
    payload: bytes
    future: asyncio.Future[int]


class RedisPublisher:
    """Pipelines PUBLISH (or SPUBLISH) commands, one batch per loop turn.

    Args:
        url: Redis URL.
        client_name: CLIENT SETNAME of the connection (visible in CLIENT LIST).
        timeout: Bound on connecting plus one round trip.
        command: ``"PUBLISH"`` or ``"SPUBLISH"``.
    """

    def __init__(
        self, url: str, *, client_name: str, timeout: float, command: str = "PUBLISH"
    ) -> None:
        self._url = url
        self._client_name = client_name
        self._timeout = timeout
        self._command = command
        self._client: Redis | None = None
        self._pending: list[_Outgoing] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._failing = False
        self._stale = False

    async def publish(self, channel: str, payload: bytes) -> int:
        """Queue one publication for this turn's pipeline and wait for its reply.

        Args:
            channel: The full (prefixed) channel name.
            payload: Opaque bytes.

        Returns:
            The receiver count Redis replied.

        Raises:
            BusError: Redis unreachable or too slow, Redis refused it, or the publisher is closed.
        """
        if self._closed:
            raise BusError("bus closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._pending.append(_Outgoing(channel, payload, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name=f"{self._client_name}-flush")
        return await future

    def mark_stale(self) -> None:
        """The connection probably died (the subscriber lost Redis): reconnect before next batch."""
        self._stale = True

    async def close(self) -> None:
        """Fail whatever is queued and ``aclose()`` the client."""
        self._closed = True
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        self._fail_all(self._pending, "bus closed")
        self._pending = []
        client, self._client = self._client, None
        if client is not None:
            await aclose_quietly(client)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:_MAX_PIPELINE]
                del self._pending[:_MAX_PIPELINE]
                try:
                    await self._send(batch)
                except asyncio.CancelledError:
                    self._fail_all(batch, "bus closed")
                    raise
        finally:
            self._flusher = None

    async def _connected(self) -> Redis:
        client = self._client
        if client is not None and self._stale:
            # Batches never overlap, so the old client is idle: replace it, don't abort it.
            self._client = None
            await aclose_quietly(client)
            client = None
        self._stale = False
        if client is None:
            client = self._client = Redis.from_url(
                self._url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                socket_keepalive=True,
                retry=Retry(NoBackoff(), 0),  # a retried PUBLISH could be delivered twice
                client_name=self._client_name,
                **NO_DRIVER_INFO,
            )
        return client

    async def _send(self, batch: list[_Outgoing]) -> None:
        client = await self._connected()
        try:
            async with asyncio.timeout(self._timeout):
                pipe = client.pipeline(transaction=False)
                for item in batch:
                    pipe.execute_command(self._command, item.channel, item.payload)
                results = await pipe.execute(raise_on_error=False)
        except FAILURES as exc:
            if not self._failing:
                log.warning("bus: publish failed (%r); callers store their messages", exc)
            self._failing = True
            self._client = None
            await aclose_quietly(client)
            self._fail_all(batch, f"publish failed: {exc!r}")
            return
        if self._failing:
            log.info("bus: publishing works again")
            self._failing = False
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue  # its caller was cancelled
            if isinstance(result, Exception):
                item.future.set_exception(BusError(f"publish refused: {result}"))
            else:
                item.future.set_result(int(result))

    @staticmethod
    def _fail_all(batch: Iterable[_Outgoing], reason: str) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(BusError(reason))
