"""SqlStore: the Store protocols over SQLAlchemy Core (async).

One implementation for every dialect; they differ only by URL:

* ``sqlite:///path.db`` (default; driver aiosqlite). WAL journal and a busy
  timeout make it safe for several node processes on one machine; every write
  is a single autocommitted statement or a write-only transaction, so SQLite
  never has to upgrade a read lock (which would fail with "database is locked"
  instead of waiting).
* ``postgresql://...`` (driver asyncpg) and ``mysql://...`` (driver aiomysql)
  for clusters spanning machines.

All SQL is built by SQLAlchemy with bound parameters; nothing is formatted
into query text.
"""

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, event, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from clusterchat.store.base import Group, Member, NameTaken, Store, StoredMessage, User
from clusterchat.store.schema import (
    chat_groups,
    friends,
    group_members,
    metadata,
    undelivered,
    users,
)

__all__ = ["SqlStore", "async_url"]

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class SqlStore:
    """The database, through one async engine (its pool is the only connection cache)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = async_url(url)
        self._engine: AsyncEngine = create_async_engine(self.url, echo=echo, pool_pre_ping=True)
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)

    async def create_schema(self) -> None:
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def close(self) -> None:
        await self._engine.dispose()

    # --- users ---------------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str) -> int:
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    insert(users).values(name=name, password_hash=password_hash)
                )
        except IntegrityError as exc:
            raise NameTaken(name) from exc
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    async def get_user(self, user_id: int) -> User | None:
        async with self._engine.connect() as conn:
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
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(friends),
                    [
                        {"user_id": user_id, "friend_id": friend_id},
                        {"user_id": friend_id, "friend_id": user_id},
                    ],
                )
        except IntegrityError:
            return False
        return True

    async def friends_of(self, user_id: int) -> list[User]:
        query = (
            select(users.c.id, users.c.name)
            .join(friends, friends.c.friend_id == users.c.id)
            .where(friends.c.user_id == user_id)
            .order_by(users.c.id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [User(row.id, row.name) for row in rows]

    # --- groups --------------------------------------------------------------------

    async def create_group(self, name: str, description: str, creator_id: int) -> int:
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    insert(chat_groups).values(name=name, description=description)
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
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(chat_groups).where(chat_groups.c.id == group_id))
            ).first()
        return None if row is None else Group(row.id, row.name, row.description)

    async def add_member(self, group_id: int, user_id: int, role: str = "normal") -> bool:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(group_members).values(group_id=group_id, user_id=user_id, role=role)
                )
        except IntegrityError:
            return False
        return True

    async def members(self, group_id: int) -> list[Member]:
        query = (
            select(group_members.c.user_id, users.c.name, group_members.c.role)
            .join(users, users.c.id == group_members.c.user_id)
            .where(group_members.c.group_id == group_id)
            .order_by(group_members.c.user_id)
        )
        async with self._engine.connect() as conn:
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
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        groups: dict[int, tuple[Group, list[Member]]] = {}
        for row in rows:
            entry = groups.get(row.id)
            if entry is None:
                entry = groups[row.id] = (Group(row.id, row.group_name, row.description), [])
            entry[1].append(Member(row.user_id, row.user_name, row.role))
        return list(groups.values())

    # --- undelivered messages ------------------------------------------------------

    async def store_messages(self, items: Sequence[tuple[int, str, bytes]]) -> None:
        if not items:
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(undelivered),
                [{"user_id": uid, "mid": mid, "payload": payload} for uid, mid, payload in items],
            )

    async def pending(
        self, user_ids: Iterable[int], limit: int, after: int = 0
    ) -> list[StoredMessage]:
        ids = list(user_ids)
        if not ids:
            return []
        query = (
            select(
                undelivered.c.seq, undelivered.c.user_id, undelivered.c.mid, undelivered.c.payload
            )
            .where(undelivered.c.user_id.in_(ids), undelivered.c.seq > after)
            .order_by(undelivered.c.seq)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [StoredMessage(row.seq, row.user_id, row.mid, bytes(row.payload)) for row in rows]

    async def remove(self, seqs: Iterable[int]) -> None:
        batch = list(seqs)
        if not batch:
            return
        async with self._engine.begin() as conn:
            for start in range(0, len(batch), 500):
                await conn.execute(
                    delete(undelivered).where(undelivered.c.seq.in_(batch[start : start + 500]))
                )


_: type[Store] = SqlStore
