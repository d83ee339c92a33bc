"""RedisBus: cross-node delivery over Redis pub/sub (classic, or sharded with ``sharded=True``).

Theory of operation
===================

Two Redis clients, never a 100-connection pool (docs: FIELD-NOTES "redis-py"):

* **Subscriber**: one client holding one connection, with *no* socket read
  timeout (redis-py 8 defaults to 5 s, which turns a quiet channel into a
  ``TimeoutError`` loop), a connect timeout and TCP keepalive. One **listener
  task** reads it; for each message it strips the prefix and calls
  ``handler.on_bus_message(channel, payload)`` synchronously, in order, and
  never awaits business work.
* **Publisher** (``clusterchat.bus.redis_publisher``): a second client with a
  bounded timeout (``publish_timeout``). Everything ``publish()``ed in one
  event-loop turn goes to Redis as one pipeline (``transaction=False``) over
  one connection, without delaying a lone publication; each caller gets its
  own PUBLISH reply (the receiver count). If the round trip fails, every
  publish of that batch raises ``BusError`` (the caller announces it again later)
  and the client is dropped (``aclose()``); the next batch connects afresh.

**Reconnects are ours, not redis-py's.** We never use redis-py's ``PubSub``
(whose connect callback silently re-subscribes the channels *it* remembers),
so every new subscriber connection passes through one place, the
**supervisor** task (``clusterchat.bus.redis_supervisor``, shared with
``RedisClusterBus``), and the node always learns that the bus came back:

1. connect (whole handshake bounded by ``connect_timeout``); on failure sleep
   with exponential back-off (``backoff_base`` doubling to ``backoff_cap``,
   with jitter) and retry;
2. under the subscription lock, SUBSCRIBE (in batches) to our own node channel
   plus ``handler.bus_channels()``: the node's session registry is the truth,
   not a list kept here;
3. run the liveness probe once (below); only when it succeeds is the
   connection "verified";
4. if this connection follows an outage, call ``handler.on_bus_restored()``
   exactly once (the node reads what it may have missed from its log);
5. keep probing every ``probe_interval``; the session ends when the listener
   sees an error or EOF (Redis restarted, or disconnected us for an
   over-full output buffer, ``client-output-buffer-limit pubsub``), when a
   probe fails, or when a SUBSCRIBE/UNSUBSCRIBE write fails. The old client is
   ``aclose()``d (no leaked sockets) and we go back to 1.

**Liveness probe** (centrifuge's): the bus publishes a token to its own
``node:<id>`` channel (always subscribed) and expects it back on the
subscriber within ``probe_timeout``. This catches what a socket cannot tell:
a connection that looks subscribed but receives nothing, and a SIGSTOPped
Redis. Probe payloads start with ``PROBE_MAGIC`` (a NUL byte first, so no JSON
payload can look like one) and never reach the handler.

**Subscriptions.** ``subscribe``/``unsubscribe`` take the same lock as step 2,
write on the live subscriber connection, and return once Redis confirmed
(Redis confirms each channel with one reply, in command order; a confirmation
missing after ``publish_timeout`` ends the connection). So after
``subscribe()`` returns, publications reach us; after ``unsubscribe()``
returns, the handler gets nothing more from that channel (everything before
the confirmation on the stream has been dispatched). While there is no
connection they return at once without raising: the registry already holds the
change and step 2 will apply it. Because step 2 reads the registry *inside*
the lock, a change made before the snapshot is in it, and a change made after
is written after the batch: an UNSUBSCRIBE is never overtaken by a stale
SUBSCRIBE. Step 2 sends our node channel last and waits for its confirmation,
so a probe that comes back proves every SUBSCRIBE was processed.

**Bounds.** A publish raises ``BusError`` within ``publish_timeout`` when
Redis is down or frozen. A frozen or silent subscriber is detected within
``probe_interval + probe_timeout``.

**Known limits.** Pub/sub is at most once: PUBLISH counts receivers when
Redis queues the message; if Redis then disconnects the subscriber (output
buffer limit) or the subscriber's node dies before reading it, the payload is
gone although the count was 1. The service does not rely on it (its log is
the truth; every lost connection ends in ``on_bus_restored``). A Redis freeze
shorter than ``probe_interval + probe_timeout`` can fail another node's
publishes without this node noticing; that node announces them again when
its publishes work, and the service's periodic sweep is the last resort.
``sharded=True`` uses SPUBLISH/SSUBSCRIBE over a single connection: right for
standalone Redis >= 7 and single-shard clusters. A Redis Cluster of several
shards is ``RedisClusterBus`` (``clusterchat.bus.redis_cluster``), chosen by a
``redis+cluster://`` URL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.exceptions import ResponseError

from clusterchat.bus.base import Bus
from clusterchat.bus.channels import ChannelNames
from clusterchat.bus.redis_publisher import FAILURES, RedisPublisher, aclose_quietly
from clusterchat.bus.redis_subscriber import (
    PROBE_MAGIC,
    Ack,
    SubscriberSession,
    connect_subscriber,
)
from clusterchat.bus.redis_supervisor import SupervisedBus

__all__ = ["PROBE_MAGIC", "RedisBus"]

log = logging.getLogger("clusterchat.bus")

_SUBSCRIBE_BATCH = 500


class RedisBus(SupervisedBus[SubscriberSession]):
    """The Redis implementation of ``Bus``; see the module docstring.

    Args:
        url: Redis URL (``redis://127.0.0.1:6379/0``).
        node_id: This node's id; names its probe channel and its client names.
        prefix: Channel namespace of the cluster on this Redis.
        probe_interval: Seconds between liveness probes.
        probe_timeout: Seconds a probe may take (publish and receive); defaults
            to ``max(probe_interval, publish_timeout)``.
        publish_timeout: Bound on one publish round trip (and on subscription writes).
        connect_timeout: Bound on connecting and handshaking the subscriber.
        backoff_base: First reconnect delay, doubled per failed attempt.
        backoff_cap: Largest reconnect delay.
        start_timeout: How long ``start()`` waits for a verified connection
            before returning anyway (default ``connect_timeout + probe_timeout``).
        sharded: Use SPUBLISH/SSUBSCRIBE and hash-tagged channel names.
    """

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        prefix: str,
        probe_interval: float,
        probe_timeout: float | None = None,
        publish_timeout: float,
        connect_timeout: float,
        backoff_base: float,
        backoff_cap: float,
        start_timeout: float | None = None,
        sharded: bool = False,
    ) -> None:
        super().__init__(
            node_id=node_id,
            names=ChannelNames(prefix, hash_tag=sharded),
            probe_interval=probe_interval,
            probe_timeout=probe_timeout,
            publish_timeout=publish_timeout,
            connect_timeout=connect_timeout,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            start_timeout=start_timeout,
        )
        self._url = url
        if sharded:
            self._cmd_sub, self._cmd_unsub = "SSUBSCRIBE", "SUNSUBSCRIBE"
            self._msg_kind = b"smessage"
            self._ack_kinds: tuple[bytes, ...] = (b"ssubscribe", b"sunsubscribe")
        else:
            self._cmd_sub, self._cmd_unsub = "SUBSCRIBE", "UNSUBSCRIBE"
            self._msg_kind = b"message"
            self._ack_kinds = (b"subscribe", b"unsubscribe")
        self._session: SubscriberSession | None = None
        self._publisher = RedisPublisher(
            url,
            client_name=f"clusterchat-pub:{node_id}",
            timeout=publish_timeout,
            command="SPUBLISH" if sharded else "PUBLISH",
        )

    # -- Bus -------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe on the live connection, if any (else the next connect does it)."""
        await self._write_subscription(self._cmd_sub, self._names.full(channel))

    async def unsubscribe(self, channel: str) -> None:
        """Unsubscribe on the live connection, if any. Our node channel stays subscribed."""
        full = self._names.full(channel)
        if full != self._node_channel:
            await self._write_subscription(self._cmd_unsub, full)

    def publish(self, channel: str, payload: bytes) -> asyncio.Future[int]:
        """Publish through the pipelined publisher; see ``Bus.publish``.

        Returns:
            A future: the PUBLISH reply (how many subscriber connections received
            it), or ``BusError`` (Redis unreachable, too slow, or the bus closed).
        """
        return self._publisher.publish(self._names.full(channel), payload)

    # -- subscriptions ---------------------------------------------------------------

    async def _write_subscription(self, command: str, full: str) -> None:
        async with self._sub_lock:
            session = self._session
            if session is None or session.broken.is_set():
                log.debug("bus = %s %s deferred (no connection)", command, full)
                return
            try:
                ack = await self._send(session, command, [full])
            except FAILURES as exc:
                log.warning("bus: %s %s failed (%r); reconnecting", command, full, exc)
                session.fail(f"{command} failed: {exc!r}")
                return
        # Wait outside the lock: writes stay ordered, confirmations come back in order.
        await self._confirmed(session, ack, command)

    async def _send(self, session: SubscriberSession, command: str, channels: Sequence[str]) -> Ack:
        """Write a (un)subscribe command; the returned ack resolves once Redis confirmed it."""
        if not session.conn.is_connected:
            # send_command would silently reconnect: reconnects belong to the supervisor.
            raise ConnectionError("subscriber connection closed")
        ack = Ack(len(channels), asyncio.get_running_loop().create_future())
        session.acks.append(ack)
        async with asyncio.timeout(self._publish_timeout):
            await session.conn.send_command(command, *channels, check_health=False)
        return ack

    # -- the supervisor's hooks (clusterchat.bus.redis_supervisor) -------------------

    async def _connect(self) -> SubscriberSession:
        return await connect_subscriber(
            self._url,
            client_name=f"clusterchat-sub:{self._node_id}",
            connect_timeout=self._connect_timeout,
        )

    async def _serve(self, session: SubscriberSession) -> bool:
        """Run one connection until it breaks; return whether it was ever verified."""
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._listen(session), name=f"redisbus-listener-{self._node_id}")
        prober = loop.create_task(self._keep_alive(session), name=f"redisbus-probe-{self._node_id}")
        broken = loop.create_task(session.broken.wait(), name=f"redisbus-broken-{self._node_id}")
        tasks = (reader, prober, broken)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in (reader, prober):
            if task.done() and not task.cancelled() and task.exception() is not None:
                session.fail(repr(task.exception()))
        session.fail("connection ended")
        return session.verified

    async def _release(self, session: SubscriberSession) -> str:
        session.fail("unexpected error")  # kept only if nothing said why before
        self._session = None
        session.release_waiters()
        await aclose_quietly(session.client)
        self._publisher.mark_stale()  # its connection most likely died with Redis too
        return session.reason

    async def _keep_alive(self, session: SubscriberSession) -> None:
        count = await self._resubscribe(session)
        await self._probe()
        session.verified = True
        self._now_verified(f", {count} channels subscribed")
        await self._keep_probing()

    async def _resubscribe(self, session: SubscriberSession) -> int:
        """Subscribe the registry's channels and our node channel; return how many."""
        async with self._sub_lock:
            self._session = session
            wanted: set[str] = set()
            if self._handler is not None:
                wanted.update(self._names.full(c) for c in self._handler.bus_channels())
            wanted.discard(self._node_channel)
            # Our node channel goes last: once a probe comes back through it, Redis has
            # processed every SUBSCRIBE before it.
            channels = [*sorted(wanted), self._node_channel]
            ack: Ack | None = None
            for i in range(0, len(channels), _SUBSCRIBE_BATCH):
                ack = await self._send(session, self._cmd_sub, channels[i : i + _SUBSCRIBE_BATCH])
        if ack is not None:
            await self._confirmed(session, ack, self._cmd_sub)
        return len(channels)

    async def _round_trip(self) -> None:
        await self._probe_through(self._node_channel)

    def _publish_probe(self, channel: str, token: bytes) -> asyncio.Future[int]:
        return self._publisher.publish(channel, token)

    async def _close_publisher(self) -> None:
        await self._publisher.close()

    # -- listener --------------------------------------------------------------------

    async def _listen(self, session: SubscriberSession) -> None:
        conn = session.conn
        while True:
            try:
                response = await conn.read_response(push_request=True, disconnect_on_error=False)
            except ResponseError as exc:  # e.g. a refused SUBSCRIBE; the connection lives on
                log.error("bus: Redis refused a subscription command: %s", exc)
                session.confirm(whole_command=True)
                continue
            self._dispatch(session, response)

    def _dispatch(self, session: SubscriberSession, response: object) -> None:
        if not isinstance(response, list) or len(response) != 3:
            return
        kind = response[0]
        if kind in self._ack_kinds:
            session.confirm()
            return
        if kind != self._msg_kind:
            return
        raw_channel, payload = response[1], response[2]
        if not isinstance(raw_channel, bytes) or not isinstance(payload, bytes):
            return
        channel = raw_channel.decode("utf-8", "replace")
        if channel == self._node_channel and payload.startswith(PROBE_MAGIC):
            self._probe_returned(payload)
            return
        self._hand_off(channel, payload)


_: type[Bus] = RedisBus
