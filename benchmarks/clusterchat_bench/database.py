"""The database of the bench's own cluster: its SQLite file, a given URL, or a private PostgreSQL.

``--db`` chooses (``BenchOptions.db``):

- not given: one SQLite file in the run's temporary directory, shared by the nodes;
- a URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``): that
  database, which must exist; the bench upgrades its schema before any node
  starts, as ``clusterchat up`` does, and its users carry a per-run token, so
  a database used before is fine;
- ``postgresql``: a private PostgreSQL server for the run, started here and
  stopped by pid at the end (``PrivatePostgres``): ``initdb`` into a
  temporary directory, the server on a free loopback port and a socket in
  that directory, ``trust`` authentication, and PostgreSQL's own defaults for
  everything else (``fsync`` and ``synchronous_commit`` on: every commit
  waits for the disk, which SQLite's ``synchronous=NORMAL`` does not).
  PostgreSQL refuses to run as root; run as root, the server runs as the
  ``postgres`` user Debian's package creates, through ``setpriv`` (which execs
  the server, so the pid held is the postmaster's). This is what the tests'
  fixture (tests/support/postgres.py) does, without its throwaway settings.

Passwords in a URL never reach ``bench.json`` or the output (``redact_url``).
"""

import contextlib
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from clusterchat.cluster.errors import ChildFailed
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.postgres import as_server_user, postgres_bin_dir, server_dir
from clusterchat.cluster.processes import (
    Child,
    log_tail,
    spawn,
    stop,
    wait_for_log,
)

__all__ = ["POSTGRES_SETTINGS", "PrivatePostgres", "database_kind"]

HOST = "127.0.0.1"
_READY = "database system is ready to accept connections"
_ATTEMPTS = 3
_INITDB_TIMEOUT = 120.0
_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
#: What the private server is given besides its address: nothing that changes
#: durability or memory; PostgreSQL's defaults are what an operator starts with.
POSTGRES_SETTINGS: tuple[str, ...] = ()


def database_kind(url: str) -> str:
    """``sqlite``, ``postgresql``, ``mysql``...: a database URL's scheme without its driver."""
    return urlsplit(url).scheme.split("+")[0]


@dataclass
class PrivatePostgres:
    """A private PostgreSQL server of one run (``child``: the postmaster).

    Attributes:
        dir: Its directory (data, socket), removed by ``stop``.
        port: Its TCP port on ``HOST``.
        child: The postmaster.
        version: ``postgres --version``.
    """

    dir: Path
    port: int
    child: Child
    version: str

    @property
    def url(self) -> str:
        """The URL of its ``postgres`` database (superuser, trust authentication)."""
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    @classmethod
    def start(cls, log_dir: Path) -> "PrivatePostgres":
        """initdb a new cluster and start its server on a free loopback port.

        Args:
            log_dir: Where ``initdb.log`` and ``postgres.log`` go.

        Raises:
            MissingDependency: PostgreSQL (or, as root, its user) is missing.
            ChildFailed: initdb failed or the server did not become ready;
                nothing is left running and its directory is removed.
        """
        bin_dir = postgres_bin_dir()
        base = server_dir("clusterchat-bench-pg-")
        try:
            data = base / "data"
            initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres"]
            initdb += ["--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]
            child = spawn(
                "initdb", as_server_user(initdb), log_path=log_dir / "initdb.log", cwd=base
            )
            if child.popen.wait(timeout=_INITDB_TIMEOUT) != 0:
                raise ChildFailed(f"initdb failed:\n{log_tail(child)}")
            version = subprocess.run(
                [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True
            ).stdout.strip()
            for attempt in range(1, _ATTEMPTS + 1):
                port = free_port(HOST)
                argv = [str(bin_dir / "postgres"), "-D", str(data), "-k", str(base)]
                argv += ["-p", str(port), "-h", HOST]
                for setting in POSTGRES_SETTINGS:
                    argv += ["-c", setting]
                server = spawn(
                    "postgres", as_server_user(argv), log_path=log_dir / "postgres.log", cwd=base
                )
                try:
                    wait_for_log(server, _READY, _READY_TIMEOUT)
                except ChildFailed:
                    stop(server, timeout=_STOP_TIMEOUT, sig=signal.SIGINT)
                    if attempt == _ATTEMPTS:
                        raise
                    continue
                return cls(dir=base, port=port, child=server, version=version)
            raise AssertionError("unreachable")  # pragma: no cover
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise

    def stop(self) -> None:
        """Fast shutdown (SIGINT; SIGKILL after a grace period), then remove its directory."""
        with contextlib.suppress(Exception):
            stop(self.child, timeout=_STOP_TIMEOUT, sig=signal.SIGINT)
        shutil.rmtree(self.dir, ignore_errors=True)
