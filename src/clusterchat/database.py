"""``clusterchat db``: bring a database to the newest schema, or say where it stands.

The schema's versions are Alembic migrations (``store/migrate.py``). ``db
upgrade`` is the only command that creates or changes tables; nodes refuse a
database that is not at the newest revision and name this command.
"""

import logging
import sys

from clusterchat.settings import redact_url
from clusterchat.store import migrate

__all__ = ["run_current", "run_upgrade"]


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
