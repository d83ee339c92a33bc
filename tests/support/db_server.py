"""What the tests' private database servers share (tests/support/postgres.py, mariadb.py)."""

import itertools
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from clusterchat.cluster import processes
from tests.support.timing import seconds

__all__ = ["HOST", "DatabaseServer"]

HOST = "127.0.0.1"


@dataclass
class DatabaseServer:
    """A running private database server, on ``HOST`` unless told otherwise.

    Attributes:
        port: Its TCP port.
        dir: Its private directory (data, socket, logs).
        child: The server process.
        host: The address it listens on (``HOST``, or an address inside a
            network namespace: tests/support/netns.py).
        prefix: The command prefix that runs a program where the server is
            reachable (``("ip", "netns", "exec", NAME)``; empty: here).
    """

    #: The URL scheme and the superuser (no password) of URLs to this server.
    scheme: ClassVar[str]
    user: ClassVar[str]

    port: int
    dir: Path
    child: processes.Child
    host: str = HOST
    prefix: Sequence[str] = ()
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str) -> str:
        """The URL of one database on this server."""
        return f"{self.scheme}://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """Create a new empty database, as an operator would; return its URL (blocking).

        The server's defaults apply (on MariaDB, character set latin1): the
        schema itself must ask for what it needs.
        """
        name = f"test_{next(self._numbers)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server by pid (SIGKILL after a grace period) and reap it."""
        raise NotImplementedError

    def client(self, database: str) -> list[str]:
        """This server's client command line (to ``host``), ready for one statement after it."""
        raise NotImplementedError

    def sql(self, statement: str, database: str = "") -> str:
        """Run one statement with the server's client; return what it printed (blocking)."""
        done = subprocess.run(
            [*self.prefix, *self.client(database), statement],
            capture_output=True,
            text=True,
            timeout=seconds(30),
        )
        if done.returncode != 0:
            raise RuntimeError(f"{statement!r} failed: {done.stderr.strip()}")
        return done.stdout
