"""SqlStore: the Store protocols over SQLAlchemy Core (async).

One implementation for every dialect; they differ only by URL:

* ``sqlite:///path.db`` (default; driver aiosqlite for reads and the rare
  account writes). WAL journal and a busy timeout make it safe for several
  node processes on one machine. The log's writes (appends, cursors) run in
  one writer thread per node (``sqlite_writer.py``): whole transactions
  without a visit to the event loop, queued across processes on a file lock.
  The other writes are single autocommitted statements or write-only
  transactions, so SQLite never has to upgrade a read lock.
* ``postgresql://...`` (driver asyncpg) and ``mysql://...`` or
  ``mariadb://...`` (driver asyncmy) for clusters spanning machines
  (docs/operations.md §Databases says why these drivers).

All SQL is built by SQLAlchemy with bound parameters; nothing is formatted
into query text.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Column, ColumnElement, Connection, event, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from clusterchat.store import log_sql
from clusterchat.store.base import (
    Appended,
    Friendship,
    Group,
    LogEntry,
    Member,
    NameTaken,
    NewMessage,
    Store,
    User,
)
from clusterchat.store.log_client import LogClient
from clusterchat.store.schema import (
    chat_groups,
    cursors,
    friend_requests,
    friends,
    group_invites,
    group_members,
    inbox,
    messages,
    users,
)
from clusterchat.store.sqlite_writer import SqliteWriter

T = TypeVar("T")

__all__ = ["SQLITE_FILE_PRAGMAS", "SqlStore", "async_url", "sqlite_pragmas"]

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+asyncmy",
    "mariadb": "mysql+asyncmy",
}


def async_url(url: str) -> str:
    """Pick the async driver for a plain database URL (``sqlite:///x.db`` and the like)."""
    parsed = make_url(url)
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is not None:
        parsed = parsed.set(drivername=driver)
    if parsed.drivername.startswith("mysql"):
        query = dict(parsed.query)
        query.setdefault("charset", "utf8mb4")
        parsed = parsed.set(query=query)
    return parsed.render_as_string(hide_password=False)


#: How a new SQLite database is made (``migrate.py`` runs these first, in
#: order; both settings are kept in the file). The page size can only be set
#: while the file is empty, so before WAL mode: pages of 2,048 bytes instead
#: of the default 4,096 made SQLite's own work per one-to-one message about
#: 30% cheaper (``benchmarks/sqlite_page_size.py``): each message changes the
#: last page of its recipient's log, and a smaller page is less to shift,
#: write to the WAL and checkpoint (docs/performance.md, "The log writer
#: alone"). A database made with other pages keeps them.
SQLITE_FILE_PRAGMAS = ("PRAGMA page_size=2048", "PRAGMA journal_mode=WAL")


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # The timeout first: switching a database to WAL needs it alone, and two
    # nodes opening a new file at once would otherwise fail at once ("locked").
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class SqlStore:
    """The database, through one async engine (its pool is the only connection cache).

    Callers queue for a connection here, in arrival order and without a
    deadline, never in the pool: on main a storm of 2,000 logins waited in
    SQLAlchemy's pool, whose 30 s timeout turned the last third into errno 50.
    ``pool_size`` connections are kept open (on SQLite each is a thread of
    aiosqlite's, and every thread more makes the GIL busier: the default,
    ``Settings.db_pool_size``, is small). Writes on SQLite go through the
    writer thread instead, and with ``machine_writer`` the log's writes
    (appends, cursors) through the machine's log writer process
    (``log_server.py``).

    Args:
        url: The database URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``).
        pool_size: Connections used at once.
        lock_timeout: Seconds an append waits for another node's append to the
            same users (PostgreSQL, MySQL/MariaDB: log_sql.py); then it fails.
        machine_writer: On a SQLite file, append through the log writer
            process of that file (started when none runs). Nodes do; tools
            and unit tests, which must start no process, do not.
        echo: Log every statement (debugging).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int,
        lock_timeout: int,
        machine_writer: bool = False,
        echo: bool = False,
    ) -> None:
        self.url = async_url(url)
        self._lock_timeout = lock_timeout
        self._engine: AsyncEngine = create_async_engine(
            self.url, echo=echo, pool_pre_ping=True, pool_size=pool_size, max_overflow=0
        )
        self._slots = asyncio.Semaphore(pool_size)
        self._writer: SqliteWriter | None = None
        self._log_client: LogClient | None = None
        self._named_locks = self._engine.dialect.name in ("mysql", "mariadb")
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine.sync_engine, "connect", sqlite_pragmas)
            path = make_url(url).database
            if path and path != ":memory:":
                self._writer = SqliteWriter(f"sqlite:///{path}", path, sqlite_pragmas)
                if machine_writer:
                    self._log_client = LogClient(path, lock_timeout)

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection, once it is this caller's turn."""
        async with self._slots, self._engine.connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction (committed at the end), once it is this caller's turn."""
        async with self._slots, self._engine.begin() as conn:
            yield conn

    async def start(self) -> None:
        """With ``machine_writer``: connect to the log writer now (starting it if
        none runs), so that the first append does not wait for it to start."""
        if self._log_client is not None:
            await self._log_client.connect()

    async def close(self) -> None:
        if self._log_client is not None:
            await self._log_client.close()
        if self._writer is not None:
            await self._writer.close()
        await self._engine.dispose()

    # --- users ---------------------------------------------------------------------

    async def create_user(
        self, name: str, password_hash: str, *, name_key: str | None = None
    ) -> int:
        try:
            async with self._begin() as conn:
                result = await conn.execute(
                    insert(users).values(
                        name=name, name_key=name_key or name, password_hash=password_hash
                    )
                )
        except IntegrityError as exc:
            raise NameTaken(name) from exc
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    async def get_user(self, user_id: int) -> User | None:
        async with self._connect() as conn:
            row = (
                await conn.execute(
                    select(users.c.id, users.c.name, users.c.password_hash).where(
                        users.c.id == user_id
                    )
                )
            ).first()
        return None if row is None else User(row.id, row.name, row.password_hash)

    # --- friends -------------------------------------------------------------------

    async def add_friendship(self, user_id: int, friend_id: int) -> bool:
        try:
            async with self._begin() as conn:
                await conn.execute(insert(friends), _both_ways(user_id, friend_id))
        except IntegrityError:
            return False
        return True

    async def friends_of(self, user_id: int) -> list[User]:
        return await self._users(friends.c.friend_id, friends.c.user_id == user_id)

    async def request_friendship(self, from_id: int, to_id: int) -> Friendship:
        return await self._write(partial(_request_friendship, from_id=from_id, to_id=to_id))

    async def friend_requests_to(self, user_id: int) -> list[User]:
        return await self._users(friend_requests.c.from_id, friend_requests.c.to_id == user_id)

    async def _users(self, user_id: Column[int], where: ColumnElement[bool]) -> list[User]:
        """The users (id and name, by id) that ``user_id`` names in its table's rows ``where``."""
        query = (
            select(users.c.id, users.c.name)
            .join(user_id.table, user_id == users.c.id)
            .where(where)
            .order_by(users.c.id)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [User(row.id, row.name) for row in rows]

    # --- groups --------------------------------------------------------------------

    async def create_group(
        self,
        name: str,
        description: str,
        creator_id: int,
        *,
        name_key: str | None = None,
        invite_only: bool = False,
    ) -> int:
        try:
            async with self._begin() as conn:
                result = await conn.execute(
                    insert(chat_groups).values(
                        name=name,
                        name_key=name_key or name,
                        description=description,
                        invite_only=invite_only,
                    )
                )
                key = result.inserted_primary_key
                assert key is not None
                group_id = int(key[0])
                await conn.execute(
                    insert(group_members).values(
                        group_id=group_id, user_id=creator_id, role="creator"
                    )
                )
        except IntegrityError as exc:
            raise NameTaken(name) from exc
        return group_id

    async def get_group(self, group_id: int) -> Group | None:
        async with self._connect() as conn:
            row = (
                await conn.execute(select(chat_groups).where(chat_groups.c.id == group_id))
            ).first()
        if row is None:
            return None
        return Group(row.id, row.name, row.description, bool(row.invite_only))

    async def add_member(self, group_id: int, user_id: int, role: str = "normal") -> bool:
        try:
            async with self._begin() as conn:
                await conn.execute(
                    insert(group_members).values(group_id=group_id, user_id=user_id, role=role)
                )
        except IntegrityError:
            return False
        return True

    async def invite(self, group_id: int, user_id: int) -> None:
        try:
            async with self._begin() as conn:
                await conn.execute(insert(group_invites).values(group_id=group_id, user_id=user_id))
        except IntegrityError:
            pass  # invited already

    async def invited(self, group_id: int, user_id: int) -> bool:
        query = select(group_invites.c.user_id).where(
            group_invites.c.group_id == group_id, group_invites.c.user_id == user_id
        )
        async with self._connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def members(self, group_id: int) -> list[Member]:
        query = (
            select(group_members.c.user_id, users.c.name, group_members.c.role)
            .join(users, users.c.id == group_members.c.user_id)
            .where(group_members.c.group_id == group_id)
            .order_by(group_members.c.user_id)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Member(row.user_id, row.name, row.role) for row in rows]

    async def groups_of(self, user_id: int) -> list[tuple[Group, list[Member]]]:
        mine = select(group_members.c.group_id).where(group_members.c.user_id == user_id)
        query = (
            select(
                chat_groups.c.id,
                chat_groups.c.name.label("group_name"),
                chat_groups.c.description,
                group_members.c.user_id,
                users.c.name.label("user_name"),
                group_members.c.role,
            )
            .join(group_members, group_members.c.group_id == chat_groups.c.id)
            .join(users, users.c.id == group_members.c.user_id)
            .where(chat_groups.c.id.in_(mine))
            .order_by(chat_groups.c.id, group_members.c.user_id)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        groups: dict[int, tuple[Group, list[Member]]] = {}
        for row in rows:
            entry = groups.get(row.id)
            if entry is None:
                entry = groups[row.id] = (Group(row.id, row.group_name, row.description), [])
            entry[1].append(Member(row.user_id, row.user_name, row.role))
        return list(groups.values())

    async def memberships(self, user_ids: Iterable[int]) -> dict[int, list[int]]:
        ids = list(user_ids)
        found: dict[int, list[int]] = {}
        async with self._connect() as conn:
            for start in range(0, len(ids), _IN_BATCH):
                query = (
                    select(group_members.c.user_id, group_members.c.group_id)
                    .where(group_members.c.user_id.in_(ids[start : start + _IN_BATCH]))
                    .order_by(group_members.c.user_id, group_members.c.group_id)
                )
                for row in await conn.execute(query):
                    found.setdefault(row.user_id, []).append(row.group_id)
        return found

    # --- the message log -----------------------------------------------------------

    async def append(self, batch: Sequence[NewMessage]) -> list[Appended]:
        if not batch:
            return []
        if self._log_client is not None:
            return await self._log_client.append(batch)
        # No retry on a unique violation: appends that share a user or a
        # conversation are serialised (log_sql.py), so one would be a bug.
        work = partial(log_sql.append, batch=batch, lock_timeout=self._lock_timeout)
        return await self._write(work, log=True)

    async def read(self, user_id: int, after: int, limit: int) -> list[LogEntry]:
        query = (
            select(inbox.c.pos, messages.c.body)
            .join(messages, messages.c.id == inbox.c.message_id)
            .where(inbox.c.user_id == user_id, inbox.c.pos > after)
            .order_by(inbox.c.pos)
            .limit(limit)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [LogEntry(row.pos, bytes(row.body)) for row in rows]

    async def heads(self, user_ids: Iterable[int]) -> dict[int, int]:
        ids = list(user_ids)
        if not ids:
            return {}
        async with self._connect() as conn:
            known: set[int] = set()
            for start in range(0, len(ids), _IN_BATCH):
                query = select(users.c.id).where(users.c.id.in_(ids[start : start + _IN_BATCH]))
                known.update(row.id for row in await conn.execute(query))
            last = await conn.run_sync(log_sql.last_positions, sorted(known))
        return {user_id: last.get(user_id, 0) for user_id in known}

    async def load_cursors(self, user_id: int) -> dict[str, int]:
        query = select(cursors.c.device, cursors.c.pos).where(cursors.c.user_id == user_id)
        async with self._connect() as conn:
            return {row.device: row.pos for row in await conn.execute(query)}

    async def save_cursors(self, items: Sequence[tuple[int, str, int]]) -> None:
        if not items:
            return
        if self._log_client is not None:
            await self._log_client.save_cursors(items)
        else:
            await self._write(partial(log_sql.save_cursors, items=items))

    async def _write(self, work: Callable[[Connection], T], *, log: bool = False) -> T:
        """Run ``work`` in one write transaction (on SQLite, in the writer thread).

        ``log``: ``work`` is a ``log_sql.append``, which locks what it writes
        for: it runs READ COMMITTED (it must see what committed while it
        waited for a lock) and, on MySQL/MariaDB, the named locks are released
        after the transaction, or the connection is dropped (which releases them).
        """
        if self._writer is not None:
            return await self._writer.run(work)
        if not log:
            async with self._begin() as conn:
                return await conn.run_sync(work)
        async with self._slots, self._engine.connect() as conn:
            await conn.execution_options(isolation_level="READ COMMITTED")
            try:
                async with conn.begin():
                    return await conn.run_sync(work)
            finally:
                if self._named_locks:
                    try:
                        await conn.run_sync(log_sql.release_named_locks)
                    except BaseException:
                        await conn.invalidate()
                        raise


def _both_ways(a: int, b: int) -> list[dict[str, int]]:
    """The two ``friends`` rows of one friendship."""
    return [{"user_id": a, "friend_id": b}, {"user_id": b, "friend_id": a}]


def _request_friendship(conn: Connection, from_id: int, to_id: int) -> Friendship:
    """Inside one write transaction: already friends, accept the other's request, or ask."""
    if conn.execute(
        select(friends.c.user_id).where(friends.c.user_id == from_id, friends.c.friend_id == to_id)
    ).first():
        return Friendship.ALREADY
    pending = friend_requests.c
    if conn.execute(
        select(pending.from_id).where(pending.from_id == to_id, pending.to_id == from_id)
    ).first():
        conn.execute(
            friend_requests.delete().where(
                ((pending.from_id == to_id) & (pending.to_id == from_id))
                | ((pending.from_id == from_id) & (pending.to_id == to_id))
            )
        )
        conn.execute(insert(friends), _both_ways(from_id, to_id))
        return Friendship.ACCEPTED
    if conn.execute(
        select(pending.from_id).where(pending.from_id == from_id, pending.to_id == to_id)
    ).first():
        return Friendship.PENDING
    conn.execute(insert(friend_requests).values(from_id=from_id, to_id=to_id))
    return Friendship.REQUESTED


_IN_BATCH = 500


_: type[Store] = SqlStore
