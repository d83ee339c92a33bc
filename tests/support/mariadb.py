"""pytest plugin: a private MariaDB server on a free loopback port, stopped by pid.

``mariadb_server`` is one server for the whole session: ``mariadb-install-db``
lays out a private data directory in the session's temporary directory,
``mariadbd`` listens on ``127.0.0.1`` and on a socket in that directory, reads
no option file (``--no-defaults``: nothing of a system installation leaks in),
binary logging and durable flushing are off (throwaway databases), and root
has an empty password from 127.0.0.1. ``mariadb_url`` is a fresh, empty
database on it for each test.

The server runs as whoever runs the tests (as root, ``--user=root`` keeps
mariadbd from switching to the ``mysql`` user). At teardown it gets
SIGTERM (a normal shutdown), SIGKILL after a grace period, and its process
group is checked gone.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusterchat.cluster import processes
from tests.support.db_server import HOST, DatabaseServer
from tests.support.processes import assert_stopped, start_on_free_port
from tests.support.timing import seconds

__all__ = ["MariaDBServer", "mariadb_server", "mariadb_url"]

_PACKAGE = "mariadb-server"
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


class MariaDBServer(DatabaseServer):
    """A running private MariaDB server (``child``: mariadbd)."""

    scheme = "mysql"
    user = "root"

    def client(self, database: str) -> list[str]:
        client = processes.find_executable("mariadb", "mariadb-client")
        argv = [client, "--no-defaults", "-h", HOST, "-P", str(self.port), "-u", "root"]
        argv += ["--batch", "--skip-column-names"]
        if database:
            argv += ["-D", database]
        return [*argv, "-e"]

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
    # As root, --user=root keeps it from switching to the mysql user; otherwise
    # it runs as whoever we are.
    as_us = ["--user=root"] if os.geteuid() == 0 else []
    setup = [install, "--no-defaults", f"--datadir={data}", *as_us]
    setup += ["--auth-root-authentication-method=normal", "--skip-test-db"]
    child = processes.spawn("mariadb-install-db", setup, log_path=base / "install.log", cwd=base)
    if child.popen.wait(timeout=seconds(120)) != 0:
        raise processes.ChildFailed(f"mariadb-install-db failed:\n{processes.log_tail(child)}")

    def argv(port: int) -> list[str]:
        server = [mariadbd, "--no-defaults", f"--datadir={data}", f"--socket={base / 'sock'}"]
        server += [f"--port={port}", f"--bind-address={HOST}", *as_us]
        return [*server, f"--pid-file={base / 'mariadbd.pid'}", *_OPTIONS]

    port, child = start_on_free_port(
        "mariadbd",
        argv,
        log_path=base / "mariadbd.log",
        ready=_READY,
        timeout=seconds(60),
        cwd=base,
    )
    return MariaDBServer(port, base, child)


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
