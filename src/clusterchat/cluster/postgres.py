"""Where Debian's PostgreSQL programs are, and how to run them as the server's user.

For whoever starts a private PostgreSQL server (the tests' fixture, the
benchmark's ``--db postgresql``): PostgreSQL refuses to run as root, so run
as root the server runs as the ``postgres`` user Debian's package creates,
through ``setpriv``, which changes the user and then *execs* the program (the
pid held is the program's), with ``--pdeathsig`` made again after the change
of user cleared the one ``processes.spawn`` set.
"""

import os
import pwd
import tempfile
from pathlib import Path

from clusterchat.cluster.errors import MissingDependency
from clusterchat.cluster.processes import find_executable

__all__ = ["POSTGRES_PACKAGE", "as_server_user", "postgres_bin_dir", "server_dir"]

POSTGRES_PACKAGE = "postgresql"


def postgres_bin_dir() -> Path:
    """Debian's PostgreSQL programs: /usr/lib/postgresql/<newest version>/bin.

    Raises:
        MissingDependency: PostgreSQL is not installed.
    """
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise MissingDependency(f"PostgreSQL not found: apt-get install {POSTGRES_PACKAGE}")
    return versions[-1]


def as_server_user(argv: list[str]) -> list[str]:
    """``argv``, run as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return argv
    setpriv = find_executable("setpriv", "util-linux")
    user = ["--reuid=postgres", "--regid=postgres", "--clear-groups"]
    return [setpriv, *user, "--pdeathsig", "TERM", "--", *argv]


def server_dir(prefix: str) -> Path:
    """A new temporary directory the server's user owns (keep ``prefix`` short: the
    socket path in it must stay under 108 bytes).

    Raises:
        MissingDependency: Run as root, and there is no ``postgres`` user.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            path.rmdir()
            raise MissingDependency(
                f"no postgres user to run PostgreSQL as: apt-get install {POSTGRES_PACKAGE}"
            ) from None
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path
