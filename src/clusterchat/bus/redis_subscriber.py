"""One subscriber connection to one Redis server, shared by RedisBus and RedisClusterBus.

A ``SubscriberSession`` is a redis-py client holding one connection with no
read timeout (FIELD-NOTES: redis-py 8's 5 s default breaks quiet channels),
TCP keepalive and no retries behind our back, plus the bookkeeping of the
(un)subscribe commands written on it and not yet confirmed. The theory of
operation is in ``clusterchat.bus.redis`` (one server) and
``clusterchat.bus.redis_cluster`` (one session per cluster primary).
"""

import asyncio
import socket
from collections import deque
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from clusterchat.bus.redis_publisher import NO_DRIVER_INFO, aclose_quietly

__all__ = [
    "PROBE_MAGIC",
    "Ack",
    "ProbeFailedError",
    "SubscriberSession",
    "connect_subscriber",
    "keepalive_options",
]

PROBE_MAGIC = b"\x00clusterchat-probe\x00"
"""How every liveness-probe payload starts; such payloads never reach the handler."""


def keepalive_options() -> dict[int, int]:
    """Kernel keepalive tuned to notice a dead peer in about 25 s (where supported)."""
    wanted = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}
    return {getattr(socket, k): v for k, v in wanted.items() if hasattr(socket, k)}


class ProbeFailedError(Exception):
    """The liveness probe did not come back in time."""


@dataclass(eq=False)
class Ack:
    """A (S)SUBSCRIBE or (S)UNSUBSCRIBE sent, waiting for one confirmation per channel.

    ``unsubscribing`` names the channel of a single-channel (S)UNSUBSCRIBE, so
    that an unsubscribe Redis pushes by itself (a slot moved away) can be told
    apart from the confirmation of ours.
    """

    remaining: int
    future: asyncio.Future[None]
    unsubscribing: str | None = None


@dataclass(eq=False)
class SubscriberSession:
    """One subscriber connection and its client (closed together).

    Redis confirms each channel of a (un)subscribe command with one reply, in
    command order, so the head of ``acks`` is always the command being
    confirmed. ``broken`` may be shared by several sessions (a cluster's
    sessions live and die together).
    """

    client: Redis
    conn: AbstractConnection
    broken: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    verified: bool = False
    acks: deque[Ack] = field(default_factory=deque)

    def fail(self, reason: str) -> None:
        """Mark the connection unusable; the supervisor replaces it."""
        if not self.broken.is_set():
            self.reason = reason
            self.broken.set()

    def confirm(self, whole_command: bool = False) -> None:
        """Count one confirmation (or a refusal of the whole head command)."""
        if not self.acks:
            return
        head = self.acks[0]
        head.remaining -= 1
        if whole_command or head.remaining <= 0:
            self.acks.popleft()
            if not head.future.done():
                head.future.set_result(None)

    def release_waiters(self) -> None:
        """Let every waiting (un)subscribe return; the next connection resubscribes."""
        while self.acks:
            future = self.acks.popleft().future
            if not future.done():
                future.set_result(None)


async def connect_subscriber(
    url: str,
    *,
    client_name: str,
    connect_timeout: float,
    broken: asyncio.Event | None = None,
) -> SubscriberSession:
    """Open one subscriber connection (the whole handshake bounded by ``connect_timeout``).

    Args:
        url: ``redis://`` URL of the server.
        client_name: CLIENT SETNAME (visible in CLIENT LIST).
        connect_timeout: Bound on connecting and handshaking.
        broken: An event to share with other sessions (default: a new one).

    Raises:
        RedisError, OSError: The server could not be reached in time.
    """
    client = Redis.from_url(
        url,
        socket_timeout=None,  # no read timeout on a pub/sub connection (FIELD-NOTES)
        socket_connect_timeout=connect_timeout,
        socket_keepalive=True,
        socket_keepalive_options=keepalive_options(),
        retry=Retry(NoBackoff(), 0),  # no retries behind our back
        health_check_interval=0,
        protocol=2,  # messages and confirmations as plain replies (RESP3 also works: push)
        client_name=client_name,
        **NO_DRIVER_INFO,
    )
    try:
        async with asyncio.timeout(connect_timeout):
            # redis-py leaves get_connection() unannotated.
            conn: AbstractConnection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    except BaseException:
        await aclose_quietly(client)
        raise
    if broken is None:
        return SubscriberSession(client, conn)
    return SubscriberSession(client, conn, broken=broken)
