"""pytest plugin: real nginx processes in front of test servers, stopped by pid.

``nginx_factory(upstreams)`` renders a config with
``clusterchat.cluster.nginx``, starts nginx as a child in its own directory
under ``tmp_path``, waits until its TCP port accepts, and returns an
``NginxHandle``. Every nginx it started is stopped at teardown, and the test
fails if any of their processes is still running.

Starting and stopping block (they poll), so from an async test call them in a
thread: ``handle = await asyncio.to_thread(nginx_factory, upstreams)``.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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

    def stop(self) -> None:
        """Stop nginx (SIGTERM, then SIGKILL) and reap it. Idempotent."""
        processes.stop(self.child, timeout=seconds(10))


NginxFactory = Callable[[list[tuple[str, int]]], NginxHandle]


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[NginxFactory]:
    """Start real nginx processes on free loopback ports; stop all of them by pid."""
    handles: list[NginxHandle] = []

    def start(upstreams: list[tuple[str, int]]) -> NginxHandle:
        prefix = tmp_path / f"nginx-{len(handles)}"
        prefix.mkdir()
        port = free_port()
        conf = render_nginx_conf(prefix, listen=("127.0.0.1", port), upstreams=upstreams)
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
