"""Fixture plugin: real ``clusterchat node`` processes on free loopback ports.

``node_factory`` starts ``python -m clusterchat node`` as a child process (in
its own session, output in ``tmp_path``), built by the same ``node_argv`` as
``clusterchat up``'s nodes (``cluster.node_command``), waits for its
"listening on" line, and at teardown stops every node it started by pid and
checks that each one is gone. The factory is synchronous: from an async test
call it through ``asyncio.to_thread`` (its waits poll with ``time.sleep``).

``NodeHandle.restart()`` starts a stopped (or killed) node again with the same
command line, environment and log file, on the same port, so that a balancer in
front of it keeps routing to it; teardown checks every process a handle started.
"""

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
from sqlalchemy.engine import make_url

from clusterchat.cluster.errors import ChildFailed
from clusterchat.cluster.node_command import node_argv
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.processes import Child, log_tail, spawn, stop, wait_for_log
from tests.support.database import migrated
from tests.support.log_writer import stop_log_writers
from tests.support.timing import seconds

__all__ = ["TEST_NODE_ENV", "NodeFactory", "NodeHandle", "node_factory"]

HOST = "127.0.0.1"

#: What every test node runs with: cheap argon2 parameters, so that registering
#: and logging in stay fast, and no back-off for the many registrations the
#: tests make from their one address (test_hostile.py sets the default back).
TEST_NODE_ENV: Mapping[str, str] = {
    "CLUSTERCHAT_ARGON2_TIME_COST": "1",
    "CLUSTERCHAT_ARGON2_MEMORY_KIB": "1024",
    "CLUSTERCHAT_REGISTRATIONS_PER_ADDRESS": "1000000",
}

_START_ATTEMPTS = 3


@dataclass
class NodeHandle:
    """A running node started by ``node_factory``.

    Attributes:
        host: The address it listens on.
        port: Its TCP port.
        child: The process, for signals and log reading (the latest one after
            ``restart()``).
        env: The complete environment it was started with (for ``restart()``).
        previous: The processes of this handle that ``restart()`` replaced, oldest
            first, all reaped.
    """

    host: str
    port: int
    child: Child
    env: Mapping[str, str] | None = None
    previous: list[Child] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the node with ``sig`` (SIGKILL after a grace period) and reap it.

        Returns:
            Its exit status (negative: killed by that signal).
        """
        return stop(self.child, timeout=seconds(10), sig=sig)

    def restart(self) -> None:
        """Start the node again on the same port, after it stopped or was killed.

        Same command line, environment and log file (appended to); returns once
        the new process listens. Blocking: from async code call it through
        ``asyncio.to_thread`` (and keep that thread alive as long as the node
        should live, see ``processes.spawn``: the default executor's threads do).

        Raises:
            RuntimeError: The node's process is still running.
            ChildFailed: The new process exited or did not become ready in time
                (it stays this handle's ``child``, so teardown still stops it).
        """
        if self.child.returncode is None:
            raise RuntimeError(f"{self.child.name} (pid {self.child.pid}) is still running")
        for attempt in range(1, _START_ATTEMPTS + 1):
            old = self.child
            self.child = spawn(old.name, old.argv, log_path=old.log_path, env=self.env)
            self.previous.append(old)
            try:
                wait_for_log(self.child, f"listening on {self.host}:{self.port}", seconds(30))
            except ChildFailed:
                # The old process's port may be taken for a moment (by another test).
                taken = "address already in use" in log_tail(self.child).lower()
                if not taken or attempt == _START_ATTEMPTS:
                    raise
                self.stop()
                time.sleep(0.2 * attempt)
                continue
            return


class NodeFactory(Protocol):
    """Starts a node and returns once it accepts connections."""

    def __call__(
        self,
        db_url: str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> NodeHandle:
        """Start a node.

        Args:
            db_url: Database URL; None uses ``sqlite:///<tmp_path>/chat.db``,
                shared by every node of the test. It is brought to the newest
                schema revision before the first node on it starts.
            extra_args: More command-line arguments for ``clusterchat node``.
            env: Environment variables added to ours (and to ``TEST_NODE_ENV``).

        Returns:
            The ready node.

        Raises:
            ChildFailed: The node exited or did not become ready in time.
        """
        ...


def _gone(child: Child) -> bool:
    """Whether the child is reaped and nothing is left in its process group."""
    if child.returncode is None:
        return False
    try:
        os.killpg(child.pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start real nodes on demand; stop each by pid at teardown and check it is gone."""
    started: list[NodeHandle] = []
    numbers = itertools.count(1)
    upgraded: set[str] = set()

    def start(
        db_url: str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> NodeHandle:
        number = next(numbers)
        url = db_url or f"sqlite:///{tmp_path / 'chat.db'}"
        if url not in upgraded:  # as an operator does before starting nodes
            upgraded.add(migrated(url))
        child_env = {**os.environ, **TEST_NODE_ENV, **(env or {})}
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = free_port(HOST)
            argv = node_argv(port, db_url=url, host=HOST, extra=extra_args)
            log_path = tmp_path / f"node-{number}.log"
            child = spawn(f"node-{number}", argv, log_path=log_path, env=child_env)
            handle = NodeHandle(HOST, port, child, env=child_env)
            started.append(handle)
            try:
                wait_for_log(child, f"listening on {HOST}:{port}", timeout=seconds(30))
            except ChildFailed:
                # Another process may have taken the port between free_port() and bind.
                taken = "address already in use" in log_tail(child).lower()
                if not taken or attempt == _START_ATTEMPTS:
                    raise
                handle.stop()
                continue
            return handle
        raise AssertionError("unreachable")  # pragma: no cover

    yield start

    for handle in reversed(started):
        with contextlib.suppress(Exception):
            handle.stop()
    leftovers = [c.pid for h in started for c in (*h.previous, h.child) if not _gone(c)]
    assert not leftovers, f"node processes still running: {leftovers}"
    for url in upgraded:
        path = make_url(url).database
        if make_url(url).get_backend_name() == "sqlite" and path:
            killed = stop_log_writers(path)
            assert not killed, f"log writers of {path} ignored SIGTERM: {killed}"
