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
**supervisor** task, and the node always learns that the bus came back:

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
import contextlib
import itertools
import logging
import random
from collections.abc import Sequence

from redis.exceptions import ResponseError

from clusterchat.bus.base import Bus, BusError, BusHandler
from clusterchat.bus.channels import DEFAULT_PREFIX, ChannelNames
from clusterchat.bus.redis_publisher import FAILURES, RedisPublisher, aclose_quietly
from clusterchat.bus.redis_subscriber import (
    PROBE_MAGIC,
    Ack,
    ProbeFailedError,
    SubscriberSession,
    connect_subscriber,
)

__all__ = ["PROBE_MAGIC", "RedisBus"]

log = logging.getLogger("clusterchat.bus")

_SUBSCRIBE_BATCH = 500


class RedisBus:
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
        prefix: str = DEFAULT_PREFIX,
        probe_interval: float = 2.0,
        probe_timeout: float | None = None,
        publish_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        start_timeout: float | None = None,
        sharded: bool = False,
    ) -> None:
        self._url = url
        self._node_id = node_id
        self._names = ChannelNames(prefix, hash_tag=sharded)
        self._node_channel = self._names.full(ChannelNames.node(node_id))
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout or max(probe_interval, publish_timeout)
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._start_timeout = start_timeout or connect_timeout + self._probe_timeout
        if sharded:
            self._cmd_sub, self._cmd_unsub = "SSUBSCRIBE", "SUNSUBSCRIBE"
            self._msg_kind = b"smessage"
            self._ack_kinds: tuple[bytes, ...] = (b"ssubscribe", b"sunsubscribe")
        else:
            self._cmd_sub, self._cmd_unsub = "SUBSCRIBE", "UNSUBSCRIBE"
            self._msg_kind = b"message"
            self._ack_kinds = (b"subscribe", b"unsubscribe")

        self._handler: BusHandler | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._session: SubscriberSession | None = None
        self._sub_lock = asyncio.Lock()
        self._verified = asyncio.Event()
        self._restore_pending = False
        self._connects = 0
        self._restores = 0
        self._probes = 0

        self._publisher = RedisPublisher(
            url,
            client_name=f"clusterchat-pub:{node_id}",
            timeout=publish_timeout,
            command="SPUBLISH" if sharded else "PUBLISH",
        )

        self._probe_seq = itertools.count(1)
        self._probe_nonce = f"{random.getrandbits(64):016x}"
        self._probe_waiters: dict[bytes, asyncio.Future[None]] = {}

    # -- observability ---------------------------------------------------------------

    @property
    def connects(self) -> int:
        """How many subscriber connections were established (1 + reconnects)."""
        return self._connects

    @property
    def restores(self) -> int:
        """How many times ``on_bus_restored`` was called."""
        return self._restores

    @property
    def probes(self) -> int:
        """How many liveness probes came back."""
        return self._probes

    @property
    def connected(self) -> bool:
        """Whether a verified subscriber connection is live right now."""
        return self._verified.is_set()

    # -- Bus -------------------------------------------------------------------------

    async def start(self, handler: BusHandler) -> None:
        """Start the supervisor and wait (up to ``start_timeout``) for a verified connection.

        Never raises because Redis is down: the bus keeps reconnecting in the
        background and calls ``on_bus_restored`` once it gets through.

        Args:
            handler: Receives messages and the restored signal.
        """
        if self._supervisor is not None:
            raise RuntimeError("RedisBus already started")
        self._handler = handler
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"redisbus-supervisor-{self._node_id}"
        )
        try:
            await asyncio.wait_for(self._verified.wait(), self._start_timeout)
        except TimeoutError:
            if not self._verified.is_set():
                log.warning("bus: Redis unreachable at start; continuing, will retry")
                self._restore_pending = True

    async def close(self) -> None:
        """Stop the listener, the prober and the flusher; ``aclose()`` both clients."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        await self._publisher.close()
        self._handler = None

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

    async def _confirmed(self, session: SubscriberSession, ack: Ack, command: str) -> None:
        try:
            async with asyncio.timeout(self._publish_timeout):
                await ack.future
        except TimeoutError:
            log.warning(
                "bus: %s not confirmed within %ss; reconnecting", command, self._publish_timeout
            )
            session.fail(f"{command} not confirmed")

    # -- supervisor: connect, subscribe, verify, probe, reconnect --------------------

    async def _supervise(self) -> None:
        # Catches every Exception: a supervisor that died would be a silent, endless outage
        # (python-socketio issue 1581); a bug is logged with its traceback and retried.
        failures = 0
        while True:
            try:
                session = await self._connect()
            except Exception as exc:
                failures += 1
                delay = self._backoff(failures)
                if isinstance(exc, FAILURES):
                    log.info("bus: connect failed (%r); retry in %.2fs", exc, delay)
                else:
                    log.exception("bus: unexpected error while connecting; retry in %.2fs", delay)
                await asyncio.sleep(delay)
                continue
            self._connects += 1
            try:
                if await self._serve(session):
                    failures = 0
            except Exception:
                log.exception("bus: unexpected error on the subscriber connection")
                session.fail("unexpected error")
            finally:
                self._verified.clear()
                self._session = None
                session.release_waiters()
                await aclose_quietly(session.client)
            self._restore_pending = True
            self._publisher.mark_stale()  # its connection most likely died with Redis too
            failures += 1
            delay = self._backoff(failures)
            log.warning("bus: connection lost (%s); reconnect in %.2fs", session.reason, delay)
            await asyncio.sleep(delay)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** min(failures - 1, 30))
        return ceiling * random.uniform(0.5, 1.0)

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

    async def _keep_alive(self, session: SubscriberSession) -> None:
        count = await self._resubscribe(session)
        await self._probe()
        session.verified = True
        self._verified.set()
        log.info(
            "bus: %s, %d channels subscribed, probe ok",
            "reconnected" if self._connects > 1 else "connected",
            count,
        )
        if self._restore_pending:
            self._restore_pending = False
            self._restores += 1
            if self._handler is not None:
                try:
                    self._handler.on_bus_restored()
                except Exception:
                    log.exception("bus: on_bus_restored raised")
        while True:
            await asyncio.sleep(self._probe_interval)
            await self._probe()

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

    async def _probe(self) -> None:
        await self._round_trip()
        self._probes += 1

    async def barrier(self) -> None:
        """Return once everything published to this node before the call was handled.

        A probe round trip: Redis delivers to one subscriber connection in
        order, so when our own token comes back, every payload published
        before it to a channel we are subscribed to has reached the handler.

        Raises:
            BusError: the bus is down or the token did not come back in time.
        """
        try:
            await self._round_trip()
        except ProbeFailedError as exc:
            raise BusError(str(exc)) from None

    async def _round_trip(self) -> None:
        token = PROBE_MAGIC + f"{self._probe_nonce}:{next(self._probe_seq)}".encode()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probe_waiters[token] = waiter
        try:
            async with asyncio.timeout(self._probe_timeout):
                receivers = await self._publisher.publish(self._node_channel, token)
                if receivers == 0:
                    raise ProbeFailedError("probe reached no subscriber")
                await waiter
        except TimeoutError:
            raise ProbeFailedError(f"probe not back within {self._probe_timeout}s") from None
        except BusError as exc:
            raise ProbeFailedError(f"probe publish failed: {exc}") from None
        finally:
            del self._probe_waiters[token]

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
            waiter = self._probe_waiters.get(payload)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        bare = self._names.bare(channel)
        if bare is None or self._handler is None:
            return
        try:
            self._handler.on_bus_message(bare, payload)
        except Exception:
            log.exception("bus: on_bus_message raised for %s", bare)


_: type[Bus] = RedisBus
