"""The composition root: one chat node built from its settings.

This is the only module that picks concrete implementations: SqlStore for the
database, RedisBus + RedisPresence when a Redis URL is given (a cluster;
RedisClusterBus instead of RedisBus for a ``redis+cluster://`` URL), else
LocalBus + LocalPresence (a single node). Start order: database, presence,
bus + service, listener; stop order is the reverse, after the sessions are
closed and everything that must be stored is stored.
"""

import asyncio
import gc
import logging
import secrets
import signal
import ssl
import sys

from clusterchat.bus.base import Bus
from clusterchat.bus.local import LocalBus
from clusterchat.presence.base import Presence
from clusterchat.presence.local import LocalPresence
from clusterchat.protocol import Limits
from clusterchat.redis_url import is_cluster_url, parse_cluster_url
from clusterchat.service.chat import ChatService
from clusterchat.service.context import Policy
from clusterchat.service.passwords import PasswordHasher
from clusterchat.settings import Settings, redact_url
from clusterchat.store.migrate import SchemaError, require_current
from clusterchat.store.sql import SqlStore
from clusterchat.transport.tcp import ConnectionLimits, TcpServer

__all__ = ["Node", "password_hasher", "run_node"]

log = logging.getLogger("clusterchat.node")

_STRAGGLER_TIMEOUT = 5.0


class Node:
    """A chat node: store, bus, presence, service and TCP listener, started and stopped in order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tls = _tls_context(settings)  # first: a bad certificate starts nothing
        self.node_id = settings.node_id or secrets.token_hex(4)
        self.store = SqlStore(
            settings.db,
            pool_size=settings.db_pool_size,
            lock_timeout=settings.db_lock_timeout,
            machine_writer=True,
        )
        self.bus: Bus
        self.presence: Presence
        address = f"{settings.host}:{settings.port}"
        if settings.redis:
            from clusterchat.bus.redis import RedisBus
            from clusterchat.bus.redis_cluster import RedisClusterBus
            from clusterchat.presence.redis import RedisPresence

            bus = RedisClusterBus if is_cluster_url(settings.redis) else RedisBus
            self.bus = bus(
                settings.redis,
                node_id=self.node_id,
                prefix=settings.prefix,
                probe_interval=settings.redis_probe_interval,
                publish_timeout=settings.redis_publish_timeout,
                connect_timeout=settings.redis_connect_timeout,
                backoff_base=settings.redis_backoff_base,
                backoff_cap=settings.redis_backoff_cap,
            )
            self.presence = RedisPresence(
                settings.redis,
                node_id=self.node_id,
                address=address,
                prefix=settings.prefix,
                heartbeat_interval=settings.presence_heartbeat,
                expiry=settings.presence_expiry,
            )
        else:
            self.bus = LocalBus()
            self.presence = LocalPresence(self.node_id, address)
        limits = settings.pick(Limits)
        self.service = ChatService(
            node_id=self.node_id,
            store=self.store,
            bus=self.bus,
            presence=self.presence,
            passwords=password_hasher(settings),
            limits=limits,
            policy=settings.pick(Policy),
        )
        self.tcp = TcpServer(
            self.service, protocol_limits=limits, limits=settings.pick(ConnectionLimits)
        )
        self.address: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        await self.store.start()
        await self.presence.start()
        await self.service.start()
        self.address = await self.tcp.start(
            self.settings.host,
            self.settings.port,
            tls=self._tls,
            reuse_port=self.settings.reuse_port,
        )
        return self.address

    async def stop(self) -> None:
        """Stop accepting, commit what was accepted, close the sessions, release the backends.

        Work still running after the sessions are closed (a login that was
        half-way, a drain) is cancelled and awaited *before* the database
        engine is disposed: a task cancelled after that would wait forever for
        a connection thread that is gone, and the process would not exit.
        """
        self.tcp.stop_accepting()
        await self.service.shutdown()
        await self.tcp.close()
        await self.bus.close()
        await self.presence.close()
        await _cancel_other_tasks()
        await self.store.close()


def password_hasher(settings: Settings) -> PasswordHasher:
    """The node's password hasher, with the cost and threads of ``settings``."""
    return PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_kib=settings.argon2_memory_kib,
        workers=settings.hash_workers,
    )


async def _cancel_other_tasks() -> None:
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    for task in others:
        task.cancel()
    if others:
        _, stuck = await asyncio.wait(others, timeout=_STRAGGLER_TIMEOUT)
        for task in stuck:
            log.warning("task still running at shutdown: %r", task)


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the message path (docs/performance.md).

    Chat state is freed by reference counting (messages are untracked msgspec
    Structs; sessions break no cycles), so the collector mostly rescans
    long-lived objects: freeze what start-up built, and run it less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context (TLS 1.2 and up), or None for plain TCP.

    Raises:
        ValueError: Only one of the certificate and the key is given, or TLS
            with the PROXY header (nginx terminates TLS and sends the header
            in clear; a node that terminates TLS itself is reached directly).
        OSError, ssl.SSLError: The files cannot be read or do not match.
    """
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    if settings.proxy_protocol:
        raise ValueError("--proxy-protocol is for nodes behind nginx, which terminates TLS")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def run_node(settings: Settings) -> int:
    """Run a node until SIGINT or SIGTERM; return the exit status.

    The database must be at the newest schema revision: a node never creates
    or changes tables (another node may be using them); ``clusterchat db
    upgrade`` does, and the refusal names it.
    """
    try:
        _tls_context(settings)  # the flags first, before the database is opened
        if settings.redis and is_cluster_url(settings.redis):
            parse_cluster_url(settings.redis)
    except (ValueError, OSError) as exc:  # TLS files (ssl.SSLError is an OSError), URLs
        print(f"clusterchat node: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        await require_current(settings.db)
    except SchemaError as exc:
        print(f"clusterchat node: {redact_url(settings.db)}: {exc}", file=sys.stderr, flush=True)
        return 2
    node = Node(settings)
    host, port = await node.start()
    _tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    mode = f"redis {redact_url(settings.redis)}" if settings.redis else "single node"
    tls = ", TLS" if settings.tls_cert else ""
    print(
        f"clusterchat node {node.node_id} listening on {host}:{port}"
        f" ({mode}, db {redact_url(settings.db)}{tls})",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    log.info("node %s shutting down", node.node_id)
    await node.stop()
    return 0
