"""The commands that work on a database: ``db upgrade``, ``db current``, ``import-classic``.

The schema's versions are Alembic migrations (``store/migrate.py``). ``db
upgrade`` is the only command that creates or changes tables; nodes refuse a
database that is not at the newest revision and name this command.
``import-classic`` brings the original ChatServer's data in
(``store/classic_import.py``).
"""

import logging
import sys

from sqlalchemy.exc import SQLAlchemyError

from clusterchat.service.passwords import PasswordHasher
from clusterchat.settings import Settings, redact_url
from clusterchat.store import migrate
from clusterchat.store.classic_import import ImportConflict, import_classic
from clusterchat.store.classic_source import MissingTable

__all__ = ["run_current", "run_import", "run_upgrade"]


class _Warnings(logging.Handler):
    """Print what the migrations warn about (names they kept as they were)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"clusterchat db: {record.getMessage()}", file=sys.stderr, flush=True)


async def run_upgrade(url: str) -> int:
    """Upgrade the database at ``url``, print what was done; return the exit status."""
    shown = redact_url(url)
    handler = _Warnings(level=logging.WARNING)
    logger = logging.getLogger("clusterchat.migrate")
    logger.addHandler(handler)
    try:
        done = await migrate.upgrade(url)
    except migrate.SchemaError as exc:
        print(f"clusterchat db upgrade: {shown}: {exc}", file=sys.stderr)
        return 1
    finally:
        logger.removeHandler(handler)
    if done.before is None:
        what = f"created at revision {done.after}"
    elif done.before == done.after:
        what = f"already at revision {done.after}, the newest"
    else:
        what = f"upgraded from revision {done.before} to {done.after}"
    if done.adopted is not None:
        what = f"made before schema versions, recognised as revision {done.adopted}; " + what
    print(f"{shown}: {what}")
    return 0


async def run_current(url: str) -> int:
    """Print the revision of the database at ``url``; return the exit status."""
    shown = redact_url(url)
    try:
        found = await migrate.state(url)
    except migrate.SchemaError as exc:
        print(f"clusterchat db current: {shown}: {exc}", file=sys.stderr)
        return 1
    if found.current == found.head:
        print(f"{shown}: revision {found.current}, the newest")
        return 0
    if found.current is None:
        where = "no tables yet" if not found.tables else "made before schema versions"
    else:
        where = f"revision {found.current}; the newest is {found.head}"
    print(f"{shown}: {where}; run: clusterchat db upgrade --db {shown}")
    return 0


async def run_import(source_url: str, settings: Settings) -> int:
    """Import the original ChatServer's database into ``settings.db``; print the report."""
    target = redact_url(settings.db)
    try:
        await migrate.require_current(settings.db)
    except migrate.SchemaError as exc:
        print(f"clusterchat import-classic: {target}: {exc}", file=sys.stderr)
        return 1
    hasher = PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_kib=settings.argon2_memory_kib,
        workers=settings.hash_workers,
    )
    try:
        report = await import_classic(
            source_url, settings.db, hasher.hash, settings.db_lock_timeout
        )
    except (ImportConflict, MissingTable) as exc:
        print(f"clusterchat import-classic: {exc}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, OSError) as exc:
        print(f"clusterchat import-classic: {migrate.one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        hasher.close()
    print(f"imported {redact_url(source_url)} into {target}")
    for line in report.lines():
        print(f"  {line}")
    return 0
