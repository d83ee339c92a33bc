"""RedisClusterBus: cross-node delivery over a Redis Cluster's sharded pub/sub.

Theory of operation
===================

The same contract and the same recovery as ``RedisBus`` (read its theory of
operation first), spread over the shards of a cluster. Channel names are
hash-tagged (``<prefix>:{user:42}``), so a channel's slot is the slot of its
bare name, and every command for it goes to the primary serving that slot:

* **Slot map.** ``CLUSTER SHARDS`` from the first node that answers with a
  complete map (the previous map's nodes first, then the URL's seeds);
  ``clusterchat.bus.slots``.
* **Subscribers.** One subscriber connection per primary, each read by its
  own listener task, all belonging to one *generation*: they are opened
  together after the map is read, and they die together (one shared
  ``broken`` event). A channel is subscribed on the connection of its slot's
  primary; SSUBSCRIBE takes several channels only of one slot, so the
  resubscription after a connect sends **one SSUBSCRIBE per slot** (in
  batches of at most 500 channels), all the commands of one primary in one
  write.
* **Publishes** (``clusterchat.bus.cluster_publisher``): one pipelined
  connection per primary; each SPUBLISH goes to its slot's primary only (one
  shard touched per message), ``-MOVED`` and ``-ASK`` are followed.
* **Probes.** Each primary gets a probe channel of this node
  (``probe:<node id>:<n>``, ``n`` chosen so that its slot is on that
  primary), subscribed last in that primary's batch. A probe round trip is
  a token through *every* primary's probe channel; it proves each connection
  delivers, and ``barrier()`` is one such round trip.

**A generation ends** (everything closed, the supervisor starts over from
the map) when any of its connections is lost (a primary killed: its replica
takes over, the next map names it), a probe fails, Redis refuses a
subscription command (``-MOVED``: the slot moved), Redis unsubscribes us by
itself (an ``sunsubscribe`` we did not ask for: the slot migrated away, or
the primary became a replica), or a publish was ``-MOVED`` to an owner that
is not the one this generation subscribed at. The next generation
subscribes ``handler.bus_channels()`` afresh and calls
``handler.on_bus_restored()`` once it is verified, so the node reads what
pub/sub may have lost meanwhile from its log, exactly as after a single
Redis restarts. A whole generation, not one shard, is replaced: slot moves
shift channels between connections, failovers are rare, and the restore
reads the log for every local user anyway.

**Bounds.** While a shard has no primary (the failover window, about
``cluster-node-timeout`` plus an election) publishes to it fail with
``BusError`` at once, and the supervisor retries the map with back-off
(``backoff_base`` doubling to ``backoff_cap``). A frozen primary is detected
within ``probe_interval + probe_timeout`` as on one Redis.

**Known limits.** As ``RedisBus``: pub/sub is at most once, the log is the
truth. Subscriptions made at run time are one SSUBSCRIBE each (one user's
first session); only resubscriptions are batched. The map must be complete to
start a generation: while some slots have no primary, no shard is served.
"""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.exceptions import ResponseError

from clusterchat.bus.base import Bus
from clusterchat.bus.channels import ChannelNames
from clusterchat.bus.cluster_publisher import ClusterPublisher
from clusterchat.bus.redis_publisher import FAILURES, aclose_quietly
from clusterchat.bus.redis_subscriber import (
    PROBE_MAGIC,
    Ack,
    ProbeFailedError,
    SubscriberSession,
    connect_subscriber,
)
from clusterchat.bus.redis_supervisor import SupervisedBus
from clusterchat.bus.slots import Address, SlotMap, fetch_slot_map, slot_of
from clusterchat.redis_url import parse_cluster_url

__all__ = ["RedisClusterBus"]

log = logging.getLogger("clusterchat.bus")

_SUBSCRIBE_BATCH = 500
_PROBE_SEARCH = 1_000_000  # a probe channel name per primary is found in a few tries


@dataclass(eq=False)
class _Generation:
    """The subscriber connections opened from one slot map; they end together."""

    slot_map: SlotMap
    sessions: dict[Address, SubscriberSession]
    probes: dict[Address, str]  # primary -> full name of this node's probe channel there
    broken: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def reason(self) -> str:
        return next((s.reason for s in self.sessions.values() if s.reason), "")

    def fail(self, reason: str) -> None:
        next(iter(self.sessions.values())).fail(reason)


class RedisClusterBus(SupervisedBus[_Generation]):
    """The Redis Cluster implementation of ``Bus``; see the module docstring.

    Args:
        url: ``redis+cluster://host:port[,host:port...]`` (``clusterchat.redis_url``).
        node_id: This node's id; names its probe channels and its client names.
        prefix: Channel namespace of the cluster.
        probe_interval: Seconds between liveness probes.
        probe_timeout: Seconds a probe may take; defaults to
            ``max(probe_interval, publish_timeout)``.
        publish_timeout: Bound on one publish round trip (and on subscription writes).
        connect_timeout: Bound on reading the map and on connecting each subscriber.
        backoff_base: First reconnect delay, doubled per failed attempt.
        backoff_cap: Largest reconnect delay.
        start_timeout: How long ``start()`` waits for a verified generation
            (default ``connect_timeout + probe_timeout``).
    """

    _backend = "Redis Cluster"

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
    ) -> None:
        super().__init__(
            node_id=node_id,
            names=ChannelNames(prefix, hash_tag=True),
            probe_interval=probe_interval,
            probe_timeout=probe_timeout,
            publish_timeout=publish_timeout,
            connect_timeout=connect_timeout,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            start_timeout=start_timeout,
        )
        self._cluster = parse_cluster_url(url)
        self._generation: _Generation | None = None
        self._known: tuple[Address, ...] = ()
        self._publisher = ClusterPublisher(
            self._cluster,
            client_name=f"clusterchat-pub:{node_id}",
            timeout=publish_timeout,
            on_moved=self._moved,
        )

    @property
    def primaries(self) -> list[Address]:
        """The primaries of the live generation (empty while reconnecting)."""
        generation = self._generation
        return sorted(generation.sessions) if generation is not None else []

    # -- Bus -------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """SSUBSCRIBE on the connection of the channel's primary (else the next generation does)."""
        await self._write_subscription("SSUBSCRIBE", self._names.full(channel))

    async def unsubscribe(self, channel: str) -> None:
        """SUNSUBSCRIBE likewise. Our node channel stays subscribed."""
        full = self._names.full(channel)
        if full != self._node_channel:
            await self._write_subscription("SUNSUBSCRIBE", full)

    def publish(self, channel: str, payload: bytes) -> asyncio.Future[int]:
        """SPUBLISH on the shard of ``channel``; see ``Bus.publish``.

        Returns:
            A future: the receiver count on that shard, or ``BusError``.
        """
        return self._publisher.publish(self._names.full(channel), payload)

    # -- subscriptions ---------------------------------------------------------------

    async def _write_subscription(self, command: str, full: str) -> None:
        async with self._sub_lock:
            generation = self._generation
            if generation is None or generation.broken.is_set():
                log.debug("bus = %s %s deferred (no connection)", command, full)
                return
            owner = generation.slot_map.owner(slot_of(full))
            session = generation.sessions.get(owner) if owner is not None else None
            if session is None:
                generation.fail(f"no subscriber connection serves {full}")
                return
            unsubscribing = full if command == "SUNSUBSCRIBE" else None
            try:
                ack = await self._send(session, [(command, [full], unsubscribing)])
            except FAILURES as exc:
                log.warning("bus: %s %s failed (%r); reconnecting", command, full, exc)
                session.fail(f"{command} failed: {exc!r}")
                return
        await self._confirmed(session, ack, command)

    async def _send(
        self, session: SubscriberSession, commands: Sequence[tuple[str, list[str], str | None]]
    ) -> Ack:
        """Write commands in one go; the returned ack (of the last) resolves once confirmed."""
        if not session.conn.is_connected:
            raise ConnectionError("subscriber connection closed")
        loop = asyncio.get_running_loop()
        acks = [Ack(len(names), loop.create_future(), unsub) for _, names, unsub in commands]
        session.acks.extend(acks)
        packed = session.conn.pack_commands([(command, *names) for command, names, _ in commands])
        async with asyncio.timeout(self._publish_timeout):
            await session.conn.send_packed_command(packed, check_health=False)
        return acks[-1]

    def _moved(self, slot: int, owner: Address) -> None:
        """A publish learnt that ``slot`` moved: a generation subscribed elsewhere is stale."""
        generation = self._generation
        if generation is not None and generation.slot_map.owner(slot) != owner:
            generation.fail(f"slot {slot} moved to {owner[0]}:{owner[1]}")

    # -- supervisor: map, connect, subscribe, verify, probe, start over ----------------

    async def _release(self, generation: _Generation) -> str:
        generation.fail("unexpected error")  # kept only if nothing said why before
        self._generation = None
        for session in generation.sessions.values():
            session.release_waiters()
        await asyncio.gather(*(aclose_quietly(s.client) for s in generation.sessions.values()))
        return generation.reason

    async def _connect(self) -> _Generation:
        slot_map = await fetch_slot_map(
            self._cluster, self._known, node_timeout=self._connect_timeout
        )
        self._known = slot_map.nodes
        self._publisher.set_map(slot_map)
        broken = asyncio.Event()
        primaries = slot_map.primaries
        results = await asyncio.gather(
            *(
                connect_subscriber(
                    self._cluster.node_url(address),
                    client_name=f"clusterchat-sub:{self._node_id}",
                    connect_timeout=self._connect_timeout,
                    broken=broken,
                )
                for address in primaries
            ),
            return_exceptions=True,
        )
        sessions = {
            a: r
            for a, r in zip(primaries, results, strict=True)
            if not isinstance(r, BaseException)
        }
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await asyncio.gather(*(aclose_quietly(s.client) for s in sessions.values()))
            raise failed[0]
        probes = {address: self._probe_channel(slot_map, address) for address in primaries}
        return _Generation(slot_map, sessions, probes, broken)

    def _probe_channel(self, slot_map: SlotMap, primary: Address) -> str:
        for n in range(_PROBE_SEARCH):
            full = self._names.full(f"probe:{self._node_id}:{n}")
            if slot_map.owner(slot_of(full)) == primary:
                return full
        raise AssertionError(f"no probe channel found for {primary}")  # pragma: no cover

    async def _serve(self, generation: _Generation) -> bool:
        """Run one generation until it breaks; return whether it was ever verified."""
        loop = asyncio.get_running_loop()
        listeners = {
            address: loop.create_task(
                self._listen(generation, session), name=f"redisclusterbus-listener-{address[1]}"
            )
            for address, session in generation.sessions.items()
        }
        tasks: list[asyncio.Task[object]] = [
            *listeners.values(),
            loop.create_task(self._keep_alive(generation), name="redisclusterbus-probe"),
            loop.create_task(generation.broken.wait(), name="redisclusterbus-broken"),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                generation.fail(repr(task.exception()))
        generation.fail("connection ended")
        # A primary whose subscriber connection was lost most likely took the publisher's
        # with it: drop that one now rather than wait for a timeout. Only that one: the
        # others may carry publishes in flight (a -MOVED being followed).
        lost = [a for a, t in listeners.items() if not t.cancelled() and t.exception() is not None]
        self._publisher.mark_stale(lost)
        return any(s.verified for s in generation.sessions.values())

    async def _keep_alive(self, generation: _Generation) -> None:
        count = await self._resubscribe(generation)
        await self._probe()
        for session in generation.sessions.values():
            session.verified = True
        self._now_verified(f" to {len(generation.sessions)} primaries, {count} channels subscribed")
        await self._keep_probing()

    async def _resubscribe(self, generation: _Generation) -> int:
        """SSUBSCRIBE the registry's channels, one command per slot, probe channel last."""
        async with self._sub_lock:
            self._generation = generation
            wanted: set[str] = {self._node_channel}
            if self._handler is not None:
                wanted.update(self._names.full(c) for c in self._handler.bus_channels())
            grouped = generation.slot_map.by_owner(sorted(wanted))
            pending: list[tuple[SubscriberSession, Ack]] = []
            for address, session in generation.sessions.items():
                commands: list[tuple[str, list[str], str | None]] = []
                for _, names in sorted(grouped.get(address, {}).items()):
                    for i in range(0, len(names), _SUBSCRIBE_BATCH):
                        commands.append(("SSUBSCRIBE", names[i : i + _SUBSCRIBE_BATCH], None))
                # The probe channel last: a probe that comes back proves the rest was processed.
                commands.append(("SSUBSCRIBE", [generation.probes[address]], None))
                pending.append((session, await self._send(session, commands)))
        await asyncio.gather(*(self._confirmed(s, ack, "SSUBSCRIBE") for s, ack in pending))
        return len(wanted)

    async def _round_trip(self) -> None:
        generation = self._generation
        if generation is None:
            raise ProbeFailedError("no connection")
        await asyncio.gather(*(self._probe_through(ch) for ch in generation.probes.values()))

    def _publish_probe(self, channel: str, token: bytes) -> asyncio.Future[int]:
        return self._publisher.publish(channel, token)

    async def _close_publisher(self) -> None:
        await self._publisher.close()

    # -- listeners -------------------------------------------------------------------

    async def _listen(self, generation: _Generation, session: SubscriberSession) -> None:
        conn = session.conn
        while True:
            try:
                response = await conn.read_response(push_request=True, disconnect_on_error=False)
            except ResponseError as exc:  # -MOVED, -CLUSTERDOWN...: the map is stale
                session.confirm(whole_command=True)
                session.fail(f"Redis refused a subscription: {exc}")
                return
            self._dispatch(generation, session, response)

    def _dispatch(
        self, generation: _Generation, session: SubscriberSession, response: object
    ) -> None:
        if not isinstance(response, list) or len(response) != 3:
            return
        kind, raw_channel, payload = response
        if not isinstance(raw_channel, bytes):
            return
        channel = raw_channel.decode("utf-8", "replace")
        if kind == b"ssubscribe":
            session.confirm()
            return
        if kind == b"sunsubscribe":
            head = session.acks[0] if session.acks else None
            if head is not None and head.unsubscribing == channel:
                session.confirm()
            else:  # Redis dropped it by itself: the slot is no longer served here
                session.fail(f"Redis unsubscribed {channel} (slot moved or failover)")
            return
        if kind != b"smessage" or not isinstance(payload, bytes):
            return
        if payload.startswith(PROBE_MAGIC):
            self._probe_returned(payload)
            if channel in generation.probes.values() or channel == self._node_channel:
                return
        self._hand_off(channel, payload)


_: type[Bus] = RedisClusterBus
