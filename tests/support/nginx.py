"""pytest plugin: real nginx processes in front of test servers, stopped by pid.

``nginx_factory(upstreams)`` renders a config with
``clusterchat.cluster.nginx``, starts nginx as a child in its own directory
under ``tmp_path``, waits until its TCP port accepts, and returns an
``NginxHandle``. Every nginx it started is stopped at teardown, and the test
fails if any of their processes is still running.

Starting and stopping block (they poll), so from an async test call them in a
thread: ``handle = await asyncio.to_thread(nginx_factory, upstreams)``.

``nginx_factory(upstreams, access_log=True)`` also logs every finished TCP
session to ``handle.access_log``, one line each:
``<client port> <session seconds> <status> <upstream address(es)>``, so a test
can tell which node each of its connections went to (see ``sessions()``).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from clusterchat.cluster import processes
from clusterchat.cluster.nginx import nginx_argv, render_nginx_conf
from clusterchat.cluster.ports import free_port
from tests.support.processes import assert_stopped
from tests.support.timing import seconds

__all__ = ["NginxFactory", "NginxHandle", "nginx_factory"]


@dataclass
class NginxHandle:
    """A running nginx balancing TCP on ``127.0.0.1:port`` over its upstreams."""

    port: int
    child: processes.Child
    prefix: Path

    @property
    def access_log(self) -> Path:
        """The stream access log (written only with ``access_log=True``)."""
        return self.prefix / "stream-access.log"

    def sessions(self) -> list[tuple[int, tuple[str, int] | None]]:
        """Finished TCP sessions of the access log, in the order they ended:
        (client port, node address).

        The node is the last upstream nginx tried (the one that took the
        connection), None for a session that reached no node.
        """
        result: list[tuple[int, tuple[str, int] | None]] = []
        if not self.access_log.exists():
            return result
        for line in self.access_log.read_text().splitlines():
            fields = line.split(" ", 3)
            if len(fields) < 4 or not fields[0].isdigit():
                continue
            # Upstreams tried in turn are listed "a, b": the last one took it.
            last = fields[3].split(",")[-1].strip()
            host, _, port = last.rpartition(":")
            node = (host, int(port)) if host and port.isdigit() else None
            result.append((int(fields[0]), node))
        return result

    def stop(self) -> None:
        """Stop nginx (SIGTERM, then SIGKILL) and reap it. Idempotent."""
        processes.stop(self.child, timeout=seconds(10))


class NginxFactory(Protocol):
    """Starts nginx in front of ``upstreams`` and returns once it accepts."""

    def __call__(
        self, upstreams: list[tuple[str, int]], *, access_log: bool = False
    ) -> NginxHandle: ...


#: Inserted at the top of the stream block by ``access_log=True``.
_STREAM_LOG = """stream {{
    log_format clusterchat_sessions '$remote_port $session_time $status $upstream_addr';
    access_log {path} clusterchat_sessions;
"""


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[NginxFactory]:
    """Start real nginx processes on free loopback ports; stop all of them by pid."""
    handles: list[NginxHandle] = []

    def start(upstreams: list[tuple[str, int]], *, access_log: bool = False) -> NginxHandle:
        prefix = tmp_path / f"nginx-{len(handles)}"
        prefix.mkdir()
        port = free_port()
        conf = render_nginx_conf(prefix, listen=("127.0.0.1", port), upstreams=upstreams)
        if access_log:
            log = _STREAM_LOG.format(path=prefix / "stream-access.log")
            conf = conf.replace("stream {\n", log, 1)
        (prefix / "nginx.conf").write_text(conf)
        child = processes.spawn("nginx", nginx_argv(prefix), log_path=prefix / "error.log")
        handle = NginxHandle(port=port, child=child, prefix=prefix)
        handles.append(handle)
        processes.wait_for_port("127.0.0.1", port, seconds(10), child)
        return handle

    yield start
    for handle in handles:
        handle.stop()
    for handle in handles:
        assert_stopped(handle.child)
