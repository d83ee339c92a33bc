"""Schema versions: bring a database to the newest migration, say where it stands.

The schema is made and changed only by the migrations in
``store/migrations/versions`` (Alembic), never by a node at start: a node
asks ``require_current`` and refuses to run on a database that is not at the
newest revision, naming the command that upgrades it (``clusterchat db
upgrade``); ``clusterchat up`` upgrades once before it starts its nodes.

Upgrades queue on a lock, so any number of them may start at once on a fresh
or an old database and each migration runs once: PostgreSQL's advisory lock,
MySQL's ``GET_LOCK``, and on SQLite a file lock beside the database. The
revision is read after the lock is held.

A database that clusterchat created before migrations existed (tables, but no
``alembic_version``) is recognised by its tables, stamped with the revision
that matches them, and upgraded from there.
"""

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from clusterchat.settings import redact_url
from clusterchat.store.sql import SQLITE_FILE_PRAGMAS, async_url

__all__ = [
    "DatabaseUnavailable",
    "SchemaError",
    "SchemaOutdated",
    "SchemaState",
    "Upgraded",
    "head",
    "one_line",
    "require_current",
    "state",
    "upgrade",
    "upgrade_on",
]

_SCRIPTS = "clusterchat.store:migrations"
#: Key of PostgreSQL's advisory lock (any constant; "clusterchat" in ASCII, truncated).
_PG_LOCK = 0x636C75737465
_MYSQL_LOCK = "clusterchat.migrate"
_MYSQL_LOCK_TIMEOUT = 3600
_VERSION_TABLE = "alembic_version"


class SchemaError(Exception):
    """The schema cannot be read or brought up to date; the message says why, in one line."""


class SchemaOutdated(SchemaError):
    """The database is not at the revision this code needs; the message says what to do."""


class DatabaseUnavailable(SchemaError):
    """The database cannot be opened or read."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands.

    Attributes:
        current: Its revision (None: not versioned).
        head: The newest revision this code knows.
        tables: Whether it has any table (a versioned database always has).
    """

    current: str | None
    head: str
    tables: bool


@dataclass(frozen=True)
class Upgraded:
    """What ``upgrade`` did.

    Attributes:
        before: The revision it found (None: an empty database).
        after: The revision it left (the head).
        adopted: The revision a database made before migrations was recognised as.
    """

    before: str | None
    after: str
    adopted: str | None = None


def _config(conn: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", _SCRIPTS)
    config.attributes["connection"] = conn
    return config


@cache
def head() -> str:
    """The newest revision this code knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


async def state(url: str) -> SchemaState:
    """Where the database at ``url`` stands.

    Raises:
        DatabaseUnavailable: It cannot be opened or read.
    """
    async with _connection(url) as conn:
        return await conn.run_sync(_state)


async def require_current(url: str) -> None:
    """Return if the database at ``url`` is at the newest revision.

    Raises:
        SchemaOutdated: It is empty, older, newer, or made before migrations;
            the message names the command to run.
        DatabaseUnavailable: It cannot be opened or read.
    """
    found = await state(url)
    if found.current == found.head:
        return
    fix = f"run: clusterchat db upgrade --db {redact_url(url)}"
    if found.current is None and not found.tables:
        raise SchemaOutdated(f"the database has no tables yet; {fix}")
    if found.current is None:
        raise SchemaOutdated(f"the database was made before schema versions; {fix}")
    if not _known(found.current):
        raise SchemaOutdated(
            f"the database is at revision {found.current}, newer than this clusterchat"
            f" knows (it needs {found.head}): upgrade clusterchat"
        )
    raise SchemaOutdated(
        f"the database is at revision {found.current} and this node needs {found.head}; {fix}"
    )


async def upgrade(url: str, to: str = "head") -> Upgraded:
    """Bring the database at ``url`` to the newest revision (creating it if empty).

    Args:
        url: The database.
        to: The revision to stop at (an older one is for tests of the migrations).

    Raises:
        SchemaOutdated: Its tables match no revision clusterchat ever made, or its
            revision is newer than this code knows.
        DatabaseUnavailable: It cannot be opened, read or written.
    """
    async with _connection(url) as conn, _locked(url, conn):
        return await conn.run_sync(_upgrade, to)


def upgrade_on(conn: Connection, to: str = "head") -> Upgraded:
    """``upgrade`` on a synchronous connection the caller holds (no lock is taken).

    For tools and tests that already hold the only connection to a database
    (a new SQLite file); everything else goes through ``upgrade``. An SQLite
    database is left in WAL mode, as ``upgrade`` leaves it.
    """
    if conn.dialect.name == "sqlite":
        for pragma in SQLITE_FILE_PRAGMAS:
            conn.exec_driver_sql(pragma)
    return _upgrade(conn, to)


def _state(conn: Connection) -> SchemaState:
    tables = inspect(conn).get_table_names()
    current = MigrationContext.configure(conn).get_current_revision()
    return SchemaState(current=current, head=head(), tables=bool(tables))


def _upgrade(conn: Connection, to: str) -> Upgraded:
    config = _config(conn)
    before = MigrationContext.configure(conn).get_current_revision()
    adopted = None
    if before is None:
        adopted = _recognise(conn)
        if adopted is not None:
            command.stamp(config, adopted)
            before = adopted
    elif not _known(before):
        raise SchemaOutdated(f"the database is at revision {before}, newer than this clusterchat")
    command.upgrade(config, to)
    conn.commit()
    after = MigrationContext.configure(conn).get_current_revision()
    assert after is not None
    return Upgraded(before=before, after=after, adopted=adopted)


def _known(revision: str) -> bool:
    """Whether this code has a migration script of ``revision``."""
    try:
        return ScriptDirectory.from_config(_config()).get_revision(revision) is not None
    except CommandError:
        return False


def _recognise(conn: Connection) -> str | None:
    """The revision whose tables an unversioned database has (None: it has none).

    Raises:
        SchemaOutdated: It has tables, and they are not any revision's.
    """
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    if not tables:
        return None
    first = {"users", "friends", "chat_groups", "group_members"}
    if first <= tables and "undelivered" in tables:
        return "0001"
    log = {"messages", "inbox", "cursors"}
    if first | log <= tables:
        columns = {c["name"] for c in inspector.get_columns("users")}
        if "name_key" not in columns:
            return "0002"
        if {"friend_requests", "group_invites"} <= tables:
            return "0003"
    raise SchemaOutdated(
        f"the database has tables ({', '.join(sorted(tables))}) that no clusterchat"
        " revision made; give clusterchat a database of its own"
    )


@contextlib.asynccontextmanager
async def _connection(url: str) -> AsyncIterator[AsyncConnection]:
    """A connection of its own (no pool); the database's errors as ``DatabaseUnavailable``."""
    try:
        engine = create_async_engine(async_url(url), poolclass=NullPool)
    except (SQLAlchemyError, ImportError) as exc:  # a bad URL, a driver not installed
        raise DatabaseUnavailable(one_line(exc)) from exc
    try:
        async with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                await conn.exec_driver_sql("PRAGMA busy_timeout=30000")
                # The nodes run SQLite in WAL mode: the database is made so (the
                # mode is kept in the file), not converted by whichever node comes first.
                for pragma in SQLITE_FILE_PRAGMAS:
                    await conn.exec_driver_sql(pragma)
            yield conn
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseUnavailable(one_line(exc)) from exc
    finally:
        await engine.dispose()


def one_line(exc: BaseException) -> str:
    """A database error in one line (SQLAlchemy's carry the statement and a link after it)."""
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        exc = orig
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.asynccontextmanager
async def _locked(url: str, conn: AsyncConnection) -> AsyncIterator[None]:
    """Hold the migration lock of the database at ``url`` (on ``conn``'s session)."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK})
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK})
            await conn.commit()
    elif dialect in ("mysql", "mariadb"):
        got = await conn.scalar(
            text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": _MYSQL_LOCK, "timeout": _MYSQL_LOCK_TIMEOUT},
        )
        await conn.commit()
        if got != 1:
            raise SchemaOutdated("another upgrade held the migration lock for an hour")
        try:
            yield
        finally:
            await conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": _MYSQL_LOCK})
            await conn.commit()
    else:
        path = make_url(url).database
        if not path or path == ":memory:":
            yield
            return
        fd = os.open(f"{path}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
