"""pytest plugin: a private PostgreSQL server on a free loopback port, stopped by pid.

``postgres_server`` is one server for the whole session (``initdb`` takes
about two seconds; a database takes a tenth of one): its cluster lives in a
private temporary directory, it listens on ``127.0.0.1`` and on a socket in
that directory, durability is off (``fsync``, ``synchronous_commit``: these
are throwaway databases) and authentication is ``trust``. ``postgres_url``
is a fresh, empty database on it for each test. ``start_postgres(host=,
clients=, prefix=)`` starts one elsewhere: the several-hosts test's listens
inside a network namespace (tests/integration/test_hosts.py).

PostgreSQL refuses to run as root. Run as root (a fresh Debian machine, CI),
the server runs as the ``postgres`` user that Debian's package creates, through
``setpriv``, which changes the user and then *execs* the server: the pid we
hold is the postmaster's, and ``--pdeathsig`` lets it die with us as every
other child does (``processes.spawn``; a change of user clears the setting
``spawn`` made, so it is made again after it). The data directory is then
owned by that user, outside pytest's ``tmp_path`` (which only root may enter).

At teardown the postmaster gets SIGINT (PostgreSQL's "fast" shutdown, which
ends open sessions; SIGTERM would wait for every client to leave), its
process group is checked gone, and the directory is removed.
"""

import shutil
import signal
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from clusterchat.cluster import processes
from clusterchat.cluster.postgres import as_server_user, postgres_bin_dir, server_dir
from tests.support.db_server import HOST, DatabaseServer
from tests.support.processes import assert_stopped, start_on_free_port
from tests.support.timing import seconds

__all__ = ["PostgresServer", "postgres_server", "postgres_url", "private_dir", "start_postgres"]

_READY = "database system is ready to accept connections"
#: Throwaway databases: no waiting for the disk.
_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200")


class PostgresServer(DatabaseServer):
    """A running private PostgreSQL server (``child``: the postmaster)."""

    scheme = "postgresql"
    user = "postgres"

    def client(self, database: str) -> list[str]:
        argv = [str(postgres_bin_dir() / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", self.host, "-p", str(self.port), "-U", "postgres"]
        return [*argv, "-d", database or "postgres", "-c"]

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after a grace period; reap it."""
        processes.stop(self.child, timeout=seconds(20), sig=signal.SIGINT)


def private_dir() -> Path:
    """A directory the server's user owns (short: the socket path must stay < 108 bytes)."""
    return server_dir("clusterchat-pg-")


def start_postgres(
    base: Path,
    *,
    host: str = HOST,
    clients: IPv4Network | None = None,
    prefix: Sequence[str] = (),
) -> PostgresServer:
    """initdb into ``base/data`` and start the server on a free port.

    Args:
        base: Its private directory (see ``private_dir``).
        host: The address it listens on (``listen_addresses``), ``HOST`` by default.
        clients: A network whose hosts may connect over TCP too (a ``trust``
            line in ``pg_hba.conf``, as initdb wrote it for loopback): for an
            address inside a network namespace (tests/support/netns.py).
        prefix: The command prefix that runs the server where ``host`` is
            (``ip netns exec NAME``).

    Raises:
        MissingDependency: PostgreSQL is not installed.
        ChildFailed: initdb failed, or the server did not become ready.
    """
    bin_dir = postgres_bin_dir()
    data = base / "data"
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
    initdb += ["-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
    initdb = as_server_user(initdb)
    child = processes.spawn("initdb", initdb, log_path=base / "initdb.log", cwd=base)
    if child.popen.wait(timeout=seconds(60)) != 0:
        raise processes.ChildFailed(f"initdb failed:\n{processes.log_tail(child)}")
    if clients is not None:
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {clients} trust\n")

    def argv(port: int) -> list[str]:
        server = [str(bin_dir / "postgres"), "-D", str(data), "-k", str(base)]
        server += ["-p", str(port), "-h", host]
        for setting in _SETTINGS:
            server += ["-c", setting]
        return [*prefix, *as_server_user(server)]

    port, child = start_on_free_port(
        "postgres",
        argv,
        log_path=base / "postgres.log",
        ready=_READY,
        timeout=seconds(30),
        stop_signal=signal.SIGINT,
        cwd=base,
    )
    return PostgresServer(port, base, child, host=host, prefix=prefix)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the session; stopped by pid, its files removed."""
    base = private_dir()
    try:
        server = start_postgres(base)
        try:
            yield server
        finally:
            server.stop()
            assert_stopped(server.child)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()
