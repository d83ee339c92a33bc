"""What RedisBus and RedisClusterBus share: the supervisor, the probe and the hand-off.

``SupervisedBus`` owns the loop of the theory of operation in
``clusterchat.bus.redis``: connect (with back-off), subscribe the registry,
probe, tell the handler the bus is back after an outage, keep probing, and
start over when the connection (one server) or the generation (one
connection per cluster primary) breaks. A subclass says what a connection
*is* (``S``) through four hooks: ``_connect``, ``_serve``, ``_release`` and
``_round_trip``, and how probes and payloads are published.
"""

import asyncio
import contextlib
import itertools
import logging
import random
from typing import Generic, TypeVar

from clusterchat.bus.base import BusError, BusHandler
from clusterchat.bus.channels import ChannelNames
from clusterchat.bus.redis_publisher import FAILURES
from clusterchat.bus.redis_subscriber import PROBE_MAGIC, Ack, ProbeFailedError, SubscriberSession

__all__ = ["SupervisedBus"]

log = logging.getLogger("clusterchat.bus")

S = TypeVar("S")


class SupervisedBus(Generic[S]):
    """The supervisor and probe of a Redis bus; ``S`` is what one connect yields.

    Args:
        node_id: This node's id; names its probe channels and client names.
        names: Channel naming (prefix, hash tags).
        probe_interval: Seconds between liveness probes.
        probe_timeout: Seconds a probe may take; defaults to
            ``max(probe_interval, publish_timeout)``.
        publish_timeout: Bound on one publish round trip (and on subscription writes).
        connect_timeout: Bound on connecting.
        backoff_base: First reconnect delay, doubled per failed attempt.
        backoff_cap: Largest reconnect delay.
        start_timeout: How long ``start()`` waits for a verified connection
            (default ``connect_timeout + probe_timeout``).
    """

    #: How the backend is called in log lines ("Redis", "Redis Cluster").
    _backend = "Redis"

    def __init__(
        self,
        *,
        node_id: str,
        names: ChannelNames,
        probe_interval: float,
        probe_timeout: float | None,
        publish_timeout: float,
        connect_timeout: float,
        backoff_base: float,
        backoff_cap: float,
        start_timeout: float | None,
    ) -> None:
        self._node_id = node_id
        self._names = names
        self._node_channel = names.full(ChannelNames.node(node_id))
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout or max(probe_interval, publish_timeout)
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._start_timeout = start_timeout or connect_timeout + self._probe_timeout

        self._handler: BusHandler | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._sub_lock = asyncio.Lock()
        self._verified = asyncio.Event()
        self._restore_pending = False
        self._connects = 0
        self._restores = 0
        self._probes = 0
        self._probe_seq = itertools.count(1)
        self._probe_nonce = f"{random.getrandbits(64):016x}"
        self._probe_waiters: dict[bytes, asyncio.Future[None]] = {}

    # -- observability ---------------------------------------------------------------

    @property
    def connects(self) -> int:
        """How many connections (or cluster generations) were established (1 + reconnects)."""
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
            raise RuntimeError(f"{type(self).__name__} already started")
        self._handler = handler
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"{type(self).__name__.lower()}-supervisor-{self._node_id}"
        )
        try:
            await asyncio.wait_for(self._verified.wait(), self._start_timeout)
        except TimeoutError:
            if not self._verified.is_set():
                log.warning("bus: %s unreachable at start; continuing, will retry", self._backend)
                self._restore_pending = True

    async def close(self) -> None:
        """Stop the listeners and the prober; close every connection."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        await self._close_publisher()
        self._handler = None

    async def barrier(self) -> None:
        """Return once everything published to this node before the call was handled.

        A probe round trip: Redis delivers to one subscriber connection in
        order, so when our own token (on a cluster: one per primary) comes
        back, every payload published before it to a channel we are
        subscribed to has reached the handler.

        Raises:
            BusError: the bus is down or the token did not come back in time.
        """
        try:
            await self._round_trip()
        except ProbeFailedError as exc:
            raise BusError(str(exc)) from None

    # -- hooks -----------------------------------------------------------------------

    async def _connect(self) -> S:
        """Open a connection (or generation); raise FAILURES if the backend is unreachable."""
        raise NotImplementedError

    async def _serve(self, state: S) -> bool:
        """Run it until it breaks; return whether it was ever verified."""
        raise NotImplementedError

    async def _release(self, state: S) -> str:
        """Forget and close it after ``_serve``; return why it ended (for the log)."""
        raise NotImplementedError

    async def _round_trip(self) -> None:
        """One probe round trip through every subscriber connection.

        Raises:
            ProbeFailedError: a token did not come back in time.
        """
        raise NotImplementedError

    def _publish_probe(self, channel: str, token: bytes) -> "asyncio.Future[int]":
        raise NotImplementedError

    async def _close_publisher(self) -> None:
        raise NotImplementedError

    # -- supervisor ------------------------------------------------------------------

    async def _supervise(self) -> None:
        # Catches every Exception: a supervisor that died would be a silent, endless outage
        # (python-socketio issue 1581); a bug is logged with its traceback and retried.
        failures = 0
        while True:
            try:
                state = await self._connect()
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
            verified = False
            try:
                verified = await self._serve(state)
            except Exception:
                log.exception("bus: unexpected error on the subscriber connection")
            finally:
                self._verified.clear()
                reason = await self._release(state)
            if verified:
                failures = 0
            self._restore_pending = True
            failures += 1
            delay = self._backoff(failures)
            log.warning("bus: connection lost (%s); reconnect in %.2fs", reason, delay)
            await asyncio.sleep(delay)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** min(failures - 1, 30))
        return ceiling * random.uniform(0.5, 1.0)

    async def _confirmed(self, session: SubscriberSession, ack: Ack, command: str) -> None:
        """Wait for Redis to confirm ``ack``; no confirmation in time ends the connection."""
        try:
            async with asyncio.timeout(self._publish_timeout):
                await ack.future
        except TimeoutError:
            log.warning(
                "bus: %s not confirmed within %ss; reconnecting", command, self._publish_timeout
            )
            session.fail(f"{command} not confirmed")

    def _now_verified(self, subscribed: str) -> None:
        """The first probe of a connection came back: say so, and restore if due."""
        self._verified.set()
        log.info(
            "bus: %s%s, probe ok", "reconnected" if self._connects > 1 else "connected", subscribed
        )
        if self._restore_pending:
            self._restore_pending = False
            self._restores += 1
            if self._handler is not None:
                try:
                    self._handler.on_bus_restored()
                except Exception:
                    log.exception("bus: on_bus_restored raised")

    async def _keep_probing(self) -> None:
        """Probe every ``probe_interval`` until a probe fails (which raises)."""
        while True:
            await asyncio.sleep(self._probe_interval)
            await self._probe()

    # -- probes and payloads -----------------------------------------------------------

    async def _probe(self) -> None:
        await self._round_trip()
        self._probes += 1

    async def _probe_through(self, channel: str) -> None:
        """Publish a token on ``channel`` (one we subscribe) and wait for it to come back."""
        token = PROBE_MAGIC + f"{self._probe_nonce}:{next(self._probe_seq)}".encode()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probe_waiters[token] = waiter
        try:
            async with asyncio.timeout(self._probe_timeout):
                receivers = await self._publish_probe(channel, token)
                if receivers == 0:
                    raise ProbeFailedError(f"probe on {channel} reached no subscriber")
                await waiter
        except TimeoutError:
            raise ProbeFailedError(f"probe not back within {self._probe_timeout}s") from None
        except BusError as exc:
            raise ProbeFailedError(f"probe publish failed: {exc}") from None
        finally:
            del self._probe_waiters[token]

    def _probe_returned(self, payload: bytes) -> None:
        """A probe payload came back on a probe channel: wake its waiter."""
        waiter = self._probe_waiters.get(payload)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _hand_off(self, channel: str, payload: bytes) -> None:
        """Give a payload of a full channel name to the handler (never raises)."""
        bare = self._names.bare(channel)
        if bare is None or self._handler is None:
            return
        try:
            self._handler.on_bus_message(bare, payload)
        except Exception:
            log.exception("bus: on_bus_message raised for %s", bare)
