"""pytest plugin: a private PostgreSQL server on a free loopback port, stopped by pid.

``postgres_server`` is one server for the whole session (``initdb`` takes
about two seconds; a database takes a tenth of one): its cluster lives in a
private temporary directory, it listens on ``127.0.0.1`` and on a socket in
that directory, durability is off (``fsync``, ``synchronous_commit``: these
are throwaway databases) and authentication is ``trust``. ``postgres_url``
is a fresh, empty database on it for each test.

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

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clusterchat.cluster import processes
from clusterchat.cluster.errors import MissingDependency
from clusterchat.cluster.ports import free_port
from tests.support.processes import assert_stopped
from tests.support.timing import seconds

__all__ = ["PostgresServer", "postgres_server", "postgres_url"]

_HOST = "127.0.0.1"
_PACKAGE = "postgresql"
_PORT_ATTEMPTS = 3
_READY = "database system is ready to accept connections"
#: Throwaway databases: no waiting for the disk.
_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200")


def _bin_dir() -> Path:
    """Debian's PostgreSQL programs: /usr/lib/postgresql/<newest version>/bin."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise MissingDependency(f"PostgreSQL not found: apt-get install {_PACKAGE}")
    return versions[-1]


def _as_server_user(argv: list[str]) -> list[str]:
    """``argv``, run as the ``postgres`` user when we are root (see the module docstring)."""
    if os.geteuid() != 0:
        return argv
    setpriv = processes.find_executable("setpriv", "util-linux")
    user = "--reuid=postgres", "--regid=postgres", "--clear-groups"
    return [setpriv, *user, "--pdeathsig", "TERM", "--", *argv]


@dataclass
class PostgresServer:
    """A running private PostgreSQL server.

    Attributes:
        port: Its TCP port on 127.0.0.1.
        dir: Its private directory (data, socket, log).
        child: The postmaster.
    """

    port: int
    dir: Path
    child: processes.Child
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str) -> str:
        """The ``postgresql://`` URL of one database on this server."""
        return f"postgresql://postgres@{_HOST}:{self.port}/{database}"

    def create_database(self) -> str:
        """Create a new empty database; return its URL (blocking: psql runs)."""
        name = f"test_{next(self._numbers)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql; return what it printed (blocking)."""
        psql = str(_bin_dir() / "psql")
        argv = [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", _HOST, "-p", str(self.port), "-U", "postgres", "-d", database]
        done = subprocess.run(
            [*argv, "-c", statement], capture_output=True, text=True, timeout=seconds(30)
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql {statement!r} failed: {done.stderr.strip()}")
        return done.stdout

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after a grace period; reap it."""
        processes.stop(self.child, timeout=seconds(20), sig=signal.SIGINT)


def _private_dir() -> Path:
    """A directory the server's user owns (short: the socket path must stay < 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="clusterchat-pg-"))
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise MissingDependency(
                f"no postgres user to run PostgreSQL as: apt-get install {_PACKAGE}"
            ) from None
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def start_postgres(base: Path) -> PostgresServer:
    """initdb into ``base/data`` and start the server on a free port (retried if taken).

    Raises:
        MissingDependency: PostgreSQL is not installed.
        ChildFailed: initdb failed, or the server did not become ready.
    """
    bin_dir = _bin_dir()
    data = base / "data"
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
    initdb += ["-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
    initdb = _as_server_user(initdb)
    child = processes.spawn("initdb", initdb, log_path=base / "initdb.log", cwd=base)
    if child.popen.wait(timeout=seconds(60)) != 0:
        raise processes.ChildFailed(f"initdb failed:\n{processes.log_tail(child)}")
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = free_port(_HOST)
        argv = [str(bin_dir / "postgres"), "-D", str(data), "-k", str(base)]
        argv += ["-p", str(port), "-h", _HOST]
        for setting in _SETTINGS:
            argv += ["-c", setting]
        child = processes.spawn(
            "postgres", _as_server_user(argv), log_path=base / "postgres.log", cwd=base
        )
        server = PostgresServer(port, base, child)
        try:
            processes.wait_for_log(child, _READY, seconds(30))
        except processes.ChildFailed:
            server.stop()
            taken = "address already in use" in processes.log_tail(child).lower()
            if not taken or attempt == _PORT_ATTEMPTS:
                raise
            continue
        return server
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the session; stopped by pid, its files removed."""
    base = _private_dir()
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
