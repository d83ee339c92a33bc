"""pytest plugin: a private MariaDB server on a free loopback port, stopped by pid.

``mariadb_server`` is one server for the whole session: ``mariadb-install-db``
lays out a private data directory in the session's temporary directory,
``mariadbd`` listens on ``127.0.0.1`` and on a socket in that directory, reads
no option file (``--no-defaults``: nothing of a system installation leaks in),
binary logging and durable flushing are off (throwaway databases), and root
has an empty password from 127.0.0.1. ``mariadb_url`` is a fresh, empty
database on it for each test. ``start_mariadb(host=, clients=, prefix=)``
starts one elsewhere: the several-hosts test's listens inside a network
namespace (tests/integration/test_hosts.py).

The server runs as whoever runs the tests (as root, ``--user=root`` keeps
mariadbd from switching to the ``mysql`` user). At teardown it gets
SIGTERM (a normal shutdown), SIGKILL after a grace period, and its process
group is checked gone.
"""

import os
import subprocess
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Network
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
        argv = [client, "--no-defaults", "-h", self.host, "-P", str(self.port), "-u", "root"]
        argv += ["--batch", "--skip-column-names"]
        if database:
            argv += ["-D", database]
        return [*argv, "-e"]

    def stop(self) -> None:
        """Normal shutdown (SIGTERM), SIGKILL after a grace period; reap it."""
        processes.stop(self.child, timeout=seconds(30))


def start_mariadb(
    base: Path,
    *,
    host: str = HOST,
    clients: IPv4Network | None = None,
    prefix: Sequence[str] = (),
) -> MariaDBServer:
    """Install a data directory in ``base/data`` and start the server on a free port.

    Args:
        base: Its private directory.
        host: The address it listens on (``--bind-address``), ``HOST`` by default.
        clients: A network whose hosts may connect as root without a password
            too (as 127.0.0.1 may): for an address inside a network namespace
            (tests/support/netns.py). Granted over the server's Unix socket.
        prefix: The command prefix that runs the server where ``host`` is
            (``ip netns exec NAME``).

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
        server += [f"--port={port}", f"--bind-address={host}", *as_us]
        return [*prefix, *server, f"--pid-file={base / 'mariadbd.pid'}", *_OPTIONS]

    port, child = start_on_free_port(
        "mariadbd",
        argv,
        log_path=base / "mariadbd.log",
        ready=_READY,
        timeout=seconds(60),
        cwd=base,
    )
    server = MariaDBServer(port, base, child, host=host, prefix=prefix)
    if clients is not None:
        try:
            _grant_root(server, clients)
        except BaseException:
            server.stop()
            raise
    return server


def _grant_root(server: MariaDBServer, clients: IPv4Network) -> None:
    """Let root connect from ``clients`` without a password (over the Unix socket)."""
    account = f"'root'@'{clients.network_address}/{clients.netmask}'"
    grant = f"CREATE USER {account}; GRANT ALL PRIVILEGES ON *.* TO {account} WITH GRANT OPTION"
    client = processes.find_executable("mariadb", "mariadb-client")
    argv = [client, "--no-defaults", f"--socket={server.dir / 'sock'}", "-u", "root", "-e", grant]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds(30))
    if done.returncode != 0:
        raise processes.ChildFailed(f"granting {account} failed: {done.stderr.strip()}")


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
