"""pytest plugin: real redis-server processes on free loopback ports, stopped by pid.

``redis_server`` is a fresh server per test (starting one takes a few
milliseconds, so there is no sharing to get wrong: each test may stop, kill,
pause or restart its own). Each runs the command line of ``clusterchat up``'s
Redis (``cluster.redis.redis_argv``). ``redis_factory(*extra_args)`` starts
more, with extra server arguments that win over those, e.g.
``redis_factory("--client-output-buffer-limit", "pubsub 64kb 32kb 1")``.

``redis_factory`` and the handle's ``start``/``stop``/``kill`` block (they
poll and reap), so from an async test call them in a thread:
``await asyncio.to_thread(server.kill)``.
``pause``/``resume`` only send SIGSTOP/SIGCONT and may be called directly.
``start()`` after ``stop()`` or ``kill()`` restarts on the same port (a
restarted server is empty: persistence is off). At teardown every process a
handle ever started is stopped by pid and asserted gone.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clusterchat.cluster import processes
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.redis import redis_argv
from tests.support.processes import assert_stopped
from tests.support.timing import seconds

__all__ = ["RedisFactory", "RedisServer", "redis_factory", "redis_server"]

_HOST = "127.0.0.1"
_PORT_ATTEMPTS = 3


@dataclass
class RedisServer:
    """A redis-server child bound to ``127.0.0.1:port``, restartable on that port.

    Attributes:
        port: The TCP port (fixed for the handle's life).
        dir: The server's working directory.
        extra: Extra server arguments, applied on every (re)start.
        child: The current process (the latest one after a restart).
        started: Every process this handle started, for teardown.
    """

    port: int
    dir: Path
    extra: tuple[str, ...] = ()
    child: processes.Child | None = None
    started: list[processes.Child] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server."""
        return f"redis://{_HOST}:{self.port}/0"

    def _current(self) -> processes.Child:
        if self.child is None:
            raise RuntimeError("redis-server was never started")
        return self.child

    def start(self) -> None:
        """Start (or restart) the server on ``port`` and wait until it accepts.

        Raises:
            ChildFailed: It exited or did not accept within the timeout.
            RuntimeError: It is already running.
        """
        if self.child is not None and self.child.alive():
            raise RuntimeError("redis-server is already running")
        argv = redis_argv(self.port, self.dir, host=_HOST, extra=self.extra)
        self.child = processes.spawn("redis", argv, log_path=self.dir / "redis.log")
        self.started.append(self.child)
        processes.wait_for_port(_HOST, self.port, seconds(10), self.child)

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL) and reap it. Idempotent."""
        processes.stop(self._current(), timeout=seconds(10))

    def kill(self) -> None:
        """SIGKILL the server (a crash: no goodbye to clients) and reap it."""
        processes.kill(self._current())

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: sockets stay open, nothing is answered."""
        processes.pause(self._current())

    def resume(self) -> None:
        """Continue a paused server with SIGCONT."""
        processes.resume(self._current())

    def stop_all(self) -> None:
        """Stop every process this handle started (a paused one is continued first)."""
        for child in self.started:
            processes.stop(child, timeout=seconds(10))

    def assert_gone(self) -> None:
        """Assert that every process this handle started was reaped and is gone."""
        for child in self.started:
            assert_stopped(child)


RedisFactory = Callable[..., RedisServer]


def _start_new(base: Path, extra: tuple[str, ...]) -> RedisServer:
    """Start a server on a fresh port, retrying if another process took the port first."""
    for attempt in range(_PORT_ATTEMPTS):
        server = RedisServer(port=free_port(_HOST), dir=base, extra=extra)
        try:
            server.start()
        except processes.ChildFailed:
            server.stop_all()
            if attempt == _PORT_ATTEMPTS - 1:
                raise
            continue
        return server
    raise AssertionError("unreachable")


@pytest.fixture
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisFactory]:
    """Start redis-servers with extra arguments; all are stopped by pid at teardown."""
    servers: list[RedisServer] = []

    def make(*extra: str) -> RedisServer:
        base = tmp_path_factory.mktemp("redis")
        server = _start_new(base, tuple(extra))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop_all()
    for server in servers:
        server.assert_gone()


@pytest.fixture
def redis_server(redis_factory: RedisFactory) -> RedisServer:
    """A fresh redis-server for this test only (persistence off, loopback)."""
    return redis_factory()
