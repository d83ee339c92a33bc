"""RedisPresence: who is online, held in Redis keys that expire unless heartbeated.

Theory of operation
===================

Keys (all share the hash tag ``{prefix}``, so on Redis Cluster they live in one
slot and a MULTI over them is legal)::

    {prefix}:presence:nodes          ZSET  node id -> time of its last heartbeat
    {prefix}:presence:node:<id>      HASH  address, users (count), heartbeat; TTL = expiry
    {prefix}:presence:users:<id>     SET   the node's online user ids;       TTL = expiry

**A node is live while its node key exists.** One **writer task** owns every
write, so writes reach Redis in order. It runs every ``heartbeat_interval``
and whenever ``user_online``/``user_offline`` recorded a change; each run is
one MULTI that re-writes the node hash, applies the pending user changes,
refreshes both TTLs and re-registers the node in the ZSET. Calls made while
the writer is busy are folded into its next run, so a login storm costs a
handful of round trips, not one per user.

**Outages.** The local set of users is the truth. When a write fails, the
writer logs one WARNING, forgets the pending changes and marks the next write
*full*: DEL the user set and SADD every local user, in the same MULTI. The
same happens when a write finds our node key gone (Redis restarted or flushed
between heartbeats, or our heartbeat came too late). So presence recovers by
itself within one heartbeat of Redis coming back. While the last write failed,
``user_online``/``user_offline`` only update the local set and return at once,
and reads answer "nobody online" without trying (never a stall in the chat
path); nothing here raises because Redis is down.

**Reads** (``online``, ``nodes``) take two round trips whatever the number of
ids: the ZSET of candidate nodes, then one pipeline with, per node, EXISTS of
its node key and SMISMEMBER (or SMEMBERS) of its user set. A node whose key
expired counts as dead even if its user set lingers.

**Redis Cluster.** With a ``redis+cluster://`` URL, the primary serving the
keys' one slot is found by asking a node (the last one found, then the
URL's seeds) for one of the keys: the node serving the slot answers, any
other answers ``-MOVED`` with its address. The node then talks to that
primary with the same plain client as to a single Redis, MULTI included.
(redis-py's own async cluster pipeline runs every command queued in a MULTI
through a new thread and event loop that it joins, which would block the
node's loop.) Any failed round trip (the primary died, ``-MOVED`` after a
failover or a resharding) drops that client, and the next one looks the
primary up again: a failover is an outage like a restart, and the next
heartbeat re-writes this node's keys in full.

**Bound.** A node that dies without ``close()`` (SIGKILL, power loss) stops
heartbeating; its node key expires, so its users read offline within
``expiry`` seconds. ``close()`` deletes this node's keys only. The ZSET drops
nodes not seen for an hour (housekeeping by wall clock, generous so that clock
skew between nodes never hides a live one; liveness itself is the node key).
"""

import asyncio
import contextlib
import importlib.util
import logging
import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MovedError, RedisError

from clusterchat.presence.base import NodeInfo, Presence
from clusterchat.redis_url import is_cluster_url, parse_cluster_url

__all__ = ["RedisPresence"]

log = logging.getLogger("clusterchat.presence")

_FAILURES = (RedisError, OSError)  # OSError includes the builtin TimeoutError
_CHUNK = 1000  # ids per SADD / SMISMEMBER command
_MAX_CONNECTIONS = 4
_READ_WARNING_EVERY = 10.0
# See bus/redis.py: avoids a blocking metadata read per connection on redis-py >= 7.2.
_NO_DRIVER_INFO: dict[str, Any] = (
    {"driver_info": None} if importlib.util.find_spec("redis.driver_info") else {}
)


def _chunks(values: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


class RedisPresence:
    """The Redis implementation of ``Presence``; see the module docstring.

    Args:
        url: Redis URL.
        node_id: This node's id (unique in the cluster).
        address: Where this node can be reached (reported by ``nodes()``).
        prefix: Key namespace of the cluster on this Redis.
        heartbeat_interval: Seconds between heartbeats.
        expiry: Seconds after the last heartbeat before a node counts as dead.
        op_timeout: Bound on one Redis round trip (default ``heartbeat_interval``).
    """

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        address: str,
        prefix: str,
        heartbeat_interval: float,
        expiry: float,
        op_timeout: float | None = None,
    ) -> None:
        if expiry <= heartbeat_interval:
            raise ValueError("expiry must be longer than heartbeat_interval")
        self._url = url
        self._node_id = node_id
        self._address = address
        self._interval = heartbeat_interval
        self._expiry_ms = max(1, round(expiry * 1000))
        self._prune_after = max(3600.0, 10 * expiry)
        self._timeout = op_timeout or heartbeat_interval
        self._base = f"{{{prefix}}}:presence"
        self._registry = f"{self._base}:nodes"

        self._users: set[int] = set()
        self._changes: dict[int, bool] = {}  # user id -> online, not yet written
        self._full = True  # next write replaces the whole user set
        self._healthy = True
        self._client: Redis | None = None
        self._cluster = parse_cluster_url(url) if is_cluster_url(url) else None
        self._lookup = asyncio.Lock()
        self._primary: tuple[tuple[str, int], ...] = ()  # the last one found, asked first
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self._last_read_warning = float("-inf")

    def _node_key(self, node_id: str) -> str:
        return f"{self._base}:node:{node_id}"

    def _users_key(self, node_id: str) -> str:
        return f"{self._base}:users:{node_id}"

    # -- Presence --------------------------------------------------------------------

    async def start(self) -> None:
        """Write the first heartbeat (failure is logged, not raised) and start the writer.

        Reads (``online``, ``nodes``) also work on a presence that was never
        started: it then only observes (``clusterchat status`` does this).
        """
        if self._writer is not None or self._closed:
            raise RuntimeError("RedisPresence already started or closed")
        await self._write()
        self._writer = asyncio.get_running_loop().create_task(
            self._run(), name=f"presence-writer-{self._node_id}"
        )

    async def _connect(self) -> Redis:
        """The client, made on first use (on a cluster: after looking up the primary)."""
        client = self._client
        if client is not None:
            return client
        if self._cluster is None:
            client = self._client = self._plain(self._url)
            return client
        async with self._lookup:  # one lookup at a time: a second would leak a client
            client = self._client
            if client is None:
                address = await self._find_primary()
                client = self._client = self._plain(self._cluster.node_url(address))
        return client

    def _plain(self, url: str) -> Redis:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=_MAX_CONNECTIONS,
            timeout=self._timeout,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            socket_keepalive=True,
            # One immediate retry on a fresh connection: every command here is
            # idempotent, and it hides the stale pooled connection a restart leaves.
            retry=Retry(NoBackoff(), 1),
            client_name=f"clusterchat-presence:{self._node_id}",
            **_NO_DRIVER_INFO,
        )
        return Redis.from_pool(pool)

    async def _find_primary(self) -> tuple[str, int]:
        """The cluster primary serving the presence keys' slot.

        Asks the last primary found, then each seed, ``EXISTS`` of the
        registry key: the node that answers serves the slot; one that does
        not answers ``-MOVED`` with the address of the one that does.

        Raises:
            RedisError, OSError: No node answered either way.
        """
        assert self._cluster is not None
        last: BaseException = RedisError("no cluster node to ask")
        for address in dict.fromkeys([*self._primary, *self._cluster.seeds]):
            client = Redis.from_url(
                self._cluster.node_url(address),
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 0),
                **_NO_DRIVER_INFO,
            )
            try:
                async with asyncio.timeout(self._timeout):
                    await client.exists(self._registry)
                found = address
            except MovedError as moved:
                found = (moved.host, moved.port)
            except _FAILURES as exc:  # down, or CLUSTERDOWN during a failover
                last = exc
                continue
            finally:
                with contextlib.suppress(*_FAILURES):
                    async with asyncio.timeout(self._timeout):
                        await client.aclose()
            self._primary = (found,)
            return found
        raise last

    async def _drop_cluster_client(self) -> None:
        """After a failure on a cluster: forget the primary; the next call looks it up."""
        if self._cluster is None or self._client is None:
            return
        client, self._client = self._client, None
        with contextlib.suppress(*_FAILURES):
            async with asyncio.timeout(self._timeout):
                await client.aclose()

    async def close(self) -> None:
        """Stop heartbeating and delete this node's keys (only this node's); release the client."""
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        self._release_waiters()
        client, self._client = self._client, None
        if client is None:
            return
        if writer is not None:
            await self._unregister(client)
        with contextlib.suppress(*_FAILURES):
            async with asyncio.timeout(self._timeout):
                await client.aclose()

    async def _unregister(self, client: Redis) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                pipe = client.pipeline(transaction=True)
                pipe.delete(self._node_key(self._node_id), self._users_key(self._node_id))
                pipe.zrem(self._registry, self._node_id)
                await pipe.execute()
        except _FAILURES as exc:
            log.warning("presence: could not remove this node's keys (%r); they expire", exc)

    async def user_online(self, user_id: int) -> None:
        """Record ``user_id`` as online here; returns once written (at once if Redis is down)."""
        self._users.add(user_id)
        self._changes[user_id] = True
        await self._written()

    async def user_offline(self, user_id: int) -> None:
        """Record ``user_id`` as offline here; returns once written (at once if Redis is down)."""
        self._users.discard(user_id)
        self._changes[user_id] = False
        await self._written()

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        """The users among ``user_ids`` online on some live node; empty if Redis is down."""
        ids = sorted(set(user_ids))
        if not ids or not self._healthy or self._closed:
            return set()
        try:
            async with asyncio.timeout(self._timeout):
                client = await self._connect()
                nodes = await self._candidate_nodes(client)
                pipe = client.pipeline(transaction=False)
                for node_id in nodes:
                    pipe.exists(self._node_key(node_id))
                    for chunk in _chunks(ids):
                        pipe.execute_command("SMISMEMBER", self._users_key(node_id), *chunk)
                replies = await pipe.execute()
        except _FAILURES as exc:
            self._read_failed(exc)
            await self._drop_cluster_client()
            return set()
        found: set[int] = set()
        per_node = 1 + (len(ids) + _CHUNK - 1) // _CHUNK
        for n in range(len(nodes)):
            row = replies[n * per_node : (n + 1) * per_node]
            if not row[0]:
                continue  # node key expired: dead, whatever its user set says
            flags = [flag for chunk in row[1:] for flag in chunk]
            found.update(uid for uid, flag in zip(ids, flags, strict=True) if flag)
        return found

    async def nodes(self) -> list[NodeInfo]:
        """Every live node with its address and online users; empty if Redis is down."""
        if not self._healthy or self._closed:
            return []
        try:
            async with asyncio.timeout(self._timeout):
                client = await self._connect()
                nodes = await self._candidate_nodes(client)
                pipe = client.pipeline(transaction=False)
                for node_id in nodes:
                    pipe.hgetall(self._node_key(node_id))
                    pipe.smembers(self._users_key(node_id))
                replies = await pipe.execute()
        except _FAILURES as exc:
            self._read_failed(exc)
            await self._drop_cluster_client()
            return []
        live: list[NodeInfo] = []
        for node_id, fields, members in zip(nodes, replies[::2], replies[1::2], strict=True):
            if fields:
                address = fields.get(b"address", b"").decode()
                users = frozenset(int(m) for m in members)
                live.append(NodeInfo(node_id, address, users))
        return live

    # -- reads -----------------------------------------------------------------------

    async def _candidate_nodes(self, client: Redis) -> list[str]:
        members = await client.zrange(self._registry, 0, -1)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    def _read_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_read_warning >= _READ_WARNING_EVERY:
            self._last_read_warning = now
            log.warning("presence: read failed (%r); answering 'nobody online'", exc)

    # -- the writer ------------------------------------------------------------------

    async def _written(self) -> None:
        """Wake the writer and wait for the write that carries our change."""
        if self._writer is None or not self._healthy:
            return  # not started, or Redis down: the next (full) heartbeat carries it
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await waiter

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self._interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_beat - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            if loop.time() >= next_beat:
                next_beat = loop.time() + self._interval
            waiters, self._waiters = self._waiters, []
            try:
                await self._write()
            except Exception:  # a dead writer would silently take this node offline
                log.exception("presence: unexpected error in the heartbeat")
            finally:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _write(self) -> None:
        """One heartbeat: node hash, pending (or all) users, TTLs, registry; never raises."""
        if self._closed:
            return
        full, changes = self._full, self._changes
        self._changes = {}
        try:
            async with asyncio.timeout(self._timeout):
                client = await self._connect()
                replies = await self._heartbeat(client, full, changes).execute()
        except _FAILURES as exc:
            self._full = True  # the local set is the truth: re-write all of it next time
            if self._healthy:
                log.warning("presence: heartbeat failed (%r); users read offline meanwhile", exc)
            self._healthy = False
            await self._drop_cluster_client()
            return
        if not self._healthy:
            log.info("presence: heartbeat works again; this node's users re-written")
        self._healthy = True
        self._full = False
        if not replies[0] and not full:
            # Our node key was gone (Redis restarted, or we were late): so may our user set be.
            log.warning("presence: this node's keys had expired; re-writing its users")
            self._full = True
            self._wake.set()

    def _heartbeat(self, client: Redis, full: bool, changes: dict[int, bool]) -> Pipeline:
        """The heartbeat's MULTI: node hash, users (all, or the changes), TTLs, registry."""
        users = sorted(self._users)
        node_key, users_key = self._node_key(self._node_id), self._users_key(self._node_id)
        now = time.time()
        pipe = client.pipeline(transaction=True)
        pipe.exists(node_key)
        pipe.hset(
            node_key, mapping={"address": self._address, "users": len(users), "heartbeat": now}
        )
        pipe.pexpire(node_key, self._expiry_ms)
        if full:
            pipe.delete(users_key)
            for chunk in _chunks(users):
                pipe.sadd(users_key, *chunk)
        else:
            added = sorted(u for u, on in changes.items() if on)
            removed = sorted(u for u, on in changes.items() if not on)
            for chunk in _chunks(added):
                pipe.sadd(users_key, *chunk)
            for chunk in _chunks(removed):
                pipe.srem(users_key, *chunk)
        pipe.pexpire(users_key, self._expiry_ms)
        pipe.zadd(self._registry, {self._node_id: now})
        pipe.zremrangebyscore(self._registry, "-inf", now - self._prune_after)
        return pipe


_: type[Presence] = RedisPresence
