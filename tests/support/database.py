"""Databases for tests, at the newest schema revision, made by the migrations.

``migrated(url)`` brings a database to the newest revision. An SQLite file
that does not exist yet is a copy of one template, migrated once per test
process, so the many tests that start with an empty database pay for the
migrations once; an SQLite file that exists is upgraded in place. Both in
this process (``migrate.upgrade_on`` on a synchronous connection): unit
tests start no process. Any other database is upgraded the way an operator
does, with ``clusterchat db upgrade --db URL`` in a child process
(integration tests only); ``prefix`` runs that command elsewhere, for a
database only reachable from there (``ip netns exec NAME``,
tests/support/netns.py).

Blocking: from async code call it through ``asyncio.to_thread``.
"""

import atexit
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from clusterchat.store.migrate import upgrade_on
from tests.support.timing import seconds

__all__ = ["migrated"]

_template: Path | None = None
_template_lock = threading.Lock()


def migrated(url: str, prefix: Sequence[str] = ()) -> str:
    """Bring the database at ``url`` to the newest revision; return ``url``.

    Args:
        url: The database.
        prefix: A command prefix for ``clusterchat db upgrade`` (not for SQLite).
    """
    parsed = make_url(url)
    path = parsed.database
    on_file = parsed.get_backend_name() == "sqlite" and path not in (None, "", ":memory:")
    if on_file and path is not None:
        if Path(path).exists():
            _upgrade_file(Path(path))  # at the newest revision already, as a rule
        else:
            shutil.copyfile(_sqlite_template(), path)
        return url
    _upgrade(url, prefix)
    return url


def _upgrade_file(path: Path) -> None:
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            upgrade_on(conn)
    finally:
        engine.dispose()


def _upgrade(url: str, prefix: Sequence[str]) -> None:
    argv = [*prefix, sys.executable, "-m", "clusterchat", "db", "upgrade", "--db", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds(120))
    assert done.returncode == 0, done.stderr


def _sqlite_template() -> Path:
    global _template
    with _template_lock:
        if _template is None:
            directory = Path(tempfile.mkdtemp(prefix="clusterchat-schema-"))
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            template = directory / "template.db"
            _upgrade_file(template)
            # Its last connection is closed: everything is in the one file.
            assert not Path(f"{template}-wal").exists()
            _template = template
        return _template
