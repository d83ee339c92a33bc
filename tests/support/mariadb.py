"""pytest plugin: a private MariaDB server on a free loopback port, stopped by pid.

``mariadb_server`` is one server for the whole session: ``mariadb-install-db``
lays out a private data directory in the session's temporary directory,
``mariadbd`` listens on ``127.0.0.1`` and on a socket in that directory, reads
no option file (``--no-defaults``: nothing of a system installation leaks in),
binary logging and durable flushing are off (throwaway databases), and root
has an empty password from 127.0.0.1. ``mariadb_url`` is a fresh, empty
database on it for each test.

The server runs as whoever runs the tests (``--user=root`` keeps mariadbd from
switching to the ``mysql`` user when that is root). At teardown it gets
SIGTERM (a normal shutdown), SIGKILL after a grace period, and its process
group is checked gone.
"""

import itertools
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clusterchat.cluster import processes
from clusterchat.cluster.ports import free_port
from tests.support.processes import assert_stopped
from tests.support.timing import seconds

__all__ = ["MariaDBServer", "mariadb_server", "mariadb_url"]

_HOST = "127.0.0.1"
_PACKAGE = "mariadb-server"
_PORT_ATTEMPTS = 3
_READY = "ready for connections"
#: Throwaway databases: no binary log, no flush at each commit, a small buffer pool.
_OPTIONS = (
    "--skip-name-resolve",
    "--skip-log-bin",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--innodb-buffer-pool-size=128M",
    "--max-connections=300",
)


@dataclass
class MariaDBServer:
    """A running private MariaDB server.

    Attributes:
        port: Its TCP port on 127.0.0.1.
        dir: Its private directory (data, socket, log).
        child: The mariadbd process.
    """

    port: int
    dir: Path
    child: processes.Child
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str) -> str:
        """The ``mysql://`` URL of one database on this server."""
        return f"mysql://root@{_HOST}:{self.port}/{database}"

    def create_database(self) -> str:
        """Create a new empty database; return its URL (blocking: the client runs).

        Created as an operator would, with the server's default character set
        (latin1 here): the schema itself must ask for utf8mb4.
        """
        name = f"test_{next(self._numbers)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def sql(self, statement: str, database: str = "") -> str:
        """Run statements with the ``mariadb`` client; return what it printed (blocking)."""
        client = processes.find_executable("mariadb", "mariadb-client")
        argv = [client, "--no-defaults", "-h", _HOST, "-P", str(self.port), "-u", "root"]
        argv += ["--batch", "--skip-column-names"]
        if database:
            argv += ["-D", database]
        done = subprocess.run(
            [*argv, "-e", statement], capture_output=True, text=True, timeout=seconds(30)
        )
        if done.returncode != 0:
            raise RuntimeError(f"mariadb {statement!r} failed: {done.stderr.strip()}")
        return done.stdout

    def stop(self) -> None:
        """Normal shutdown (SIGTERM), SIGKILL after a grace period; reap it."""
        processes.stop(self.child, timeout=seconds(30))


def start_mariadb(base: Path) -> MariaDBServer:
    """Install a data directory in ``base/data`` and start the server on a free port.

    Raises:
        MissingDependency: MariaDB is not installed.
        ChildFailed: The installation failed, or the server did not become ready.
    """
    install = processes.find_executable("mariadb-install-db", _PACKAGE)
    mariadbd = processes.find_executable("mariadbd", _PACKAGE)
    data = base / "data"
    argv = [install, "--no-defaults", f"--datadir={data}", "--user=root"]
    argv += ["--auth-root-authentication-method=normal", "--skip-test-db"]
    child = processes.spawn("mariadb-install-db", argv, log_path=base / "install.log", cwd=base)
    if child.popen.wait(timeout=seconds(120)) != 0:
        raise processes.ChildFailed(f"mariadb-install-db failed:\n{processes.log_tail(child)}")
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = free_port(_HOST)
        argv = [mariadbd, "--no-defaults", f"--datadir={data}", f"--socket={base / 'sock'}"]
        argv += [f"--port={port}", f"--bind-address={_HOST}", "--user=root"]
        argv += [f"--pid-file={base / 'mariadbd.pid'}", *_OPTIONS]
        child = processes.spawn("mariadbd", argv, log_path=base / "mariadbd.log", cwd=base)
        server = MariaDBServer(port, base, child)
        try:
            processes.wait_for_log(child, _READY, seconds(60))
        except processes.ChildFailed:
            server.stop()
            taken = "address already in use" in processes.log_tail(child).lower()
            if not taken or attempt == _PORT_ATTEMPTS:
                raise
            continue
        return server
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """One private MariaDB server for the session; stopped by pid at the end."""
    server = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    try:
        yield server
    finally:
        server.stop()
        assert_stopped(server.child)


@pytest.fixture
def mariadb_url(mariadb_server: MariaDBServer) -> str:
    """The URL of a new, empty database on the session's MariaDB server."""
    return mariadb_server.create_database()
