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

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Executable, bindparam, event, func, insert, select, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from clusterchat.store.base import (
    Appended,
    Group,
    LogEntry,
    Member,
    NameTaken,
    NewMessage,
    Store,
    User,
)
from clusterchat.store.schema import (
    chat_groups,
    conversations,
    cursors,
    friends,
    group_members,
    inbox,
    messages,
    metadata,
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
        self._sqlite = self._engine.dialect.name == "sqlite"
        if self._sqlite:
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
        self._cursor_upsert = _cursor_upsert(self._engine.dialect.name)

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

    # --- the message log -----------------------------------------------------------

    async def append(self, batch: Sequence[NewMessage]) -> list[Appended]:
        if not batch:
            return []
        for attempt in range(1, _APPEND_ATTEMPTS + 1):
            try:
                async with self._engine.begin() as conn:
                    if self._sqlite:
                        # Take the write lock first: this transaction reads
                        # before it writes, and a deferred SQLite transaction
                        # cannot upgrade to a writer once another committed.
                        await conn.exec_driver_sql("BEGIN IMMEDIATE")
                    return await _append(conn, batch)
            except IntegrityError:
                # Two nodes created the same new conversation at once, or
                # stored the same (sender, cid): the retry sees their rows.
                if attempt == _APPEND_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def read(self, user_id: int, after: int, limit: int) -> list[LogEntry]:
        query = (
            select(inbox.c.pos, messages.c.body)
            .join(messages, messages.c.mid == inbox.c.mid)
            .where(inbox.c.user_id == user_id, inbox.c.pos > after)
            .order_by(inbox.c.pos)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [LogEntry(row.pos, bytes(row.body)) for row in rows]

    async def heads(self, user_ids: Iterable[int]) -> dict[int, int]:
        ids = list(user_ids)
        if not ids:
            return {}
        found: dict[int, int] = {}
        async with self._engine.connect() as conn:
            for start in range(0, len(ids), _IN_BATCH):
                query = select(users.c.id, users.c.log_head).where(
                    users.c.id.in_(ids[start : start + _IN_BATCH])
                )
                found.update((row.id, row.log_head) for row in await conn.execute(query))
        return found

    async def load_cursors(self, user_id: int) -> dict[str, int]:
        query = select(cursors.c.device, cursors.c.pos).where(cursors.c.user_id == user_id)
        async with self._engine.connect() as conn:
            return {row.device: row.pos for row in await conn.execute(query)}

    async def save_cursors(self, items: Sequence[tuple[int, str, int]]) -> None:
        latest: dict[tuple[int, str], int] = {}
        for user_id, device, pos in items:
            key = (user_id, device)
            latest[key] = max(pos, latest.get(key, 0))
        if not latest:
            return
        rows = [
            {"user_id": user_id, "device": device, "pos": pos}
            for (user_id, device), pos in sorted(latest.items())
        ]
        async with self._engine.begin() as conn:
            await conn.execute(self._cursor_upsert, rows)


_APPEND_ATTEMPTS = 3
_IN_BATCH = 500


def _cursor_upsert(dialect: str) -> Executable:
    """INSERT a cursor, or move an existing one forward (never back)."""
    if dialect == "sqlite":
        lite = sqlite_insert(cursors)
        return lite.on_conflict_do_update(
            index_elements=[cursors.c.user_id, cursors.c.device],
            set_={"pos": func.max(cursors.c.pos, lite.excluded.pos)},
        )
    if dialect == "postgresql":
        pg = pg_insert(cursors)
        return pg.on_conflict_do_update(
            index_elements=[cursors.c.user_id, cursors.c.device],
            set_={"pos": func.greatest(cursors.c.pos, pg.excluded.pos)},
        )
    if dialect in ("mysql", "mariadb"):
        my = mysql_insert(cursors)
        return my.on_duplicate_key_update(pos=func.greatest(cursors.c.pos, my.inserted.pos))
    raise ValueError(f"no cursor upsert for the {dialect} dialect")


async def _append(conn: AsyncConnection, batch: Sequence[NewMessage]) -> list[Appended]:
    """One batch, inside a write transaction (see ``SqlStore.append``)."""
    originals = await _originals(conn, batch)
    fresh: list[NewMessage] = []
    # For each message: an Appended (a duplicate) or the index of a fresh one.
    slots: list[Appended | int] = []
    index_of: dict[tuple[int, str], int] = {}
    for message in batch:
        key = None if message.cid is None else (message.sender_id, message.cid)
        if key is not None and key in originals:
            slots.append(originals[key])
        elif key is not None and key in index_of:
            slots.append(-1 - index_of[key])  # a repeat inside this batch
        else:
            if key is not None:
                index_of[key] = len(fresh)
            slots.append(len(fresh))
            fresh.append(message)

    positions = await _allocate_positions(conn, fresh)
    seqs = await _allocate_seqs(conn, fresh)
    if fresh:
        await conn.execute(
            insert(messages),
            [
                {
                    "mid": m.mid,
                    "conversation": m.conversation,
                    "seq": seq,
                    "sender_id": m.sender_id,
                    "cid": m.cid,
                    "time": m.time,
                    "body": m.body,
                }
                for m, seq in zip(fresh, seqs, strict=True)
            ],
        )
        entries = [
            {"user_id": user_id, "pos": pos, "mid": m.mid}
            for m, placed in zip(fresh, positions, strict=True)
            for user_id, pos in placed
        ]
        if entries:
            await conn.execute(insert(inbox), entries)

    done = [
        Appended(m.mid, seq, m.time, m.body, placed)
        for m, seq, placed in zip(fresh, seqs, positions, strict=True)
    ]
    results: list[Appended] = []
    for slot in slots:
        if isinstance(slot, Appended):
            results.append(slot)
        elif slot >= 0:
            results.append(done[slot])
        else:
            first = done[-1 - slot]
            results.append(Appended(first.mid, first.seq, first.time, first.body, (), True))
    return results


async def _originals(
    conn: AsyncConnection, batch: Sequence[NewMessage]
) -> dict[tuple[int, str], Appended]:
    """Messages stored earlier under a ``(sender_id, cid)`` of this batch."""
    wanted = {(m.sender_id, m.cid) for m in batch if m.cid is not None}
    if not wanted:
        return {}
    query = select(
        messages.c.sender_id,
        messages.c.cid,
        messages.c.mid,
        messages.c.seq,
        messages.c.time,
        messages.c.body,
    ).where(
        messages.c.cid.in_({cid for _, cid in wanted}),
        messages.c.sender_id.in_({sender for sender, _ in wanted}),
    )
    found: dict[tuple[int, str], Appended] = {}
    for row in await conn.execute(query):
        key = (row.sender_id, row.cid)
        if key in wanted:
            found[key] = Appended(row.mid, row.seq, row.time, bytes(row.body), (), True)
    return found


async def _allocate_positions(
    conn: AsyncConnection, fresh: Sequence[NewMessage]
) -> list[tuple[tuple[int, int], ...]]:
    """Give every recipient entry its position: ``log_head`` moves by the batch's count.

    Heads are updated in user id order, so concurrent transactions lock the
    rows they share in the same order (no deadlock) and serialise on them
    (every shared recipient sees the two batches in the same order).
    """
    counts = Counter(user_id for m in fresh for user_id in m.recipients)
    if not counts:
        return [() for _ in fresh]
    await conn.execute(
        update(users)
        .where(users.c.id == bindparam("b_id"))
        .values(log_head=users.c.log_head + bindparam("b_n")),
        [{"b_id": user_id, "b_n": n} for user_id, n in sorted(counts.items())],
    )
    heads: dict[int, int] = {}
    ids = sorted(counts)
    for start in range(0, len(ids), _IN_BATCH):
        query = select(users.c.id, users.c.log_head).where(
            users.c.id.in_(ids[start : start + _IN_BATCH])
        )
        heads.update((row.id, row.log_head) for row in await conn.execute(query))
    following = {user_id: head - counts[user_id] + 1 for user_id, head in heads.items()}
    placed: list[tuple[tuple[int, int], ...]] = []
    for m in fresh:
        entry: list[tuple[int, int]] = []
        for user_id in m.recipients:
            pos = following.get(user_id)
            if pos is None:
                continue  # no such user (any more): nobody to deliver to
            following[user_id] = pos + 1
            entry.append((user_id, pos))
        placed.append(tuple(entry))
    return placed


async def _allocate_seqs(conn: AsyncConnection, fresh: Sequence[NewMessage]) -> list[int]:
    """Number the messages of each conversation, creating its counter on first use."""
    counts = Counter(m.conversation for m in fresh)
    if not counts:
        return []
    keys = sorted(counts)
    await conn.execute(
        update(conversations)
        .where(conversations.c.key == bindparam("b_key"))
        .values(last_seq=conversations.c.last_seq + bindparam("b_n")),
        [{"b_key": key, "b_n": counts[key]} for key in keys],
    )
    last: dict[str, int] = {}
    for start in range(0, len(keys), _IN_BATCH):
        query = select(conversations.c.key, conversations.c.last_seq).where(
            conversations.c.key.in_(keys[start : start + _IN_BATCH])
        )
        last.update((row.key, row.last_seq) for row in await conn.execute(query))
    missing = [key for key in keys if key not in last]
    if missing:
        await conn.execute(
            insert(conversations), [{"key": key, "last_seq": counts[key]} for key in missing]
        )
        last.update((key, counts[key]) for key in missing)
    following = {key: last[key] - counts[key] + 1 for key in keys}
    seqs: list[int] = []
    for m in fresh:
        seqs.append(following[m.conversation])
        following[m.conversation] += 1
    return seqs


_: type[Store] = SqlStore
