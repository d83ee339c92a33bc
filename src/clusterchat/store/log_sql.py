"""The message log in SQL, as plain functions on a connection inside a write transaction.

``SqlStore`` runs them in its own way per dialect: on SQLite in the node's
writer thread (``sqlite_writer.py``), elsewhere through the async engine's
``run_sync``. The contract is in ``store/base.py``; the tables in ``schema.py``.

Theory of operation: positions are allocated as the largest one stored plus
one, so two transactions that read the same largest one must not both write;
a message's ``seq`` is its id, numbered by the database (``_insert_messages``).
On SQLite one writer at a time holds the file (the writer thread and its
file lock). On PostgreSQL and MySQL/MariaDB, several nodes append at
once, so ``append`` first takes one lock per user it will write for (each
recipient, and the sender, whose ``cid`` it checks) and per conversation
(on MySQL/MariaDB one per stripe of them: ``mysql_lock_names``), **in one stable
order** (sorted), and reads the largest positions only after that, in a READ
COMMITTED transaction (each statement sees what committed before it):

* Two appends that share a user or a conversation run one after the other, so
  neither reads a stale largest position: no duplicate, no lost message, and
  two messages that share recipients are in the same order in every log; the
  later of two messages of a conversation gets the larger id.
* Sorted acquisition means no cycle among appends, so no deadlock; the locks
  are not rows of our tables (PostgreSQL advisory locks, MySQL named locks),
  so the row locks that foreign key checks take (a friendship, a cursor)
  never wait behind them or they behind those in a cycle.
* Appends that share nothing run in parallel.

The alternatives: retrying on a unique violation lets the loser redo its
whole batch and, when two batches insert shared entries in different orders,
meet a deadlock that PostgreSQL detects only after ``deadlock_timeout`` (1 s);
``SELECT ... FOR UPDATE`` of the users' rows conflicts with those foreign key
checks (InnoDB takes a shared lock on the parent row) and would deadlock with
a friendship inserted in the other order; a head row per user would add a
write per recipient and a table. A lock is waited for at most
``lock_timeout`` seconds (``Settings.db_lock_timeout``; a frozen node holding one): then
the append fails, its locks are released, and the node's LogWriter retries it.
"""

import functools
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Executable,
    MetaData,
    Table,
    func,
    insert,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError

from clusterchat.store.base import Appended, NewMessage
from clusterchat.store.schema import cursors, inbox, messages

__all__ = [
    "MYSQL_LOCK_STRIPES",
    "append",
    "committed",
    "last_positions",
    "mysql_lock_names",
    "pg_lock_keys",
    "release_named_locks",
    "save_cursors",
]

#: MySQL/MariaDB: how many named locks the users and conversations are spread over.
MYSQL_LOCK_STRIPES = 1024
#: PostgreSQL advisory lock keys: (kind << 32) | 32-bit id, kinds unlikely to be another's.
_PG_USER_LOCK = 0x43430001 << 32  # "CC" 1: a user's log
_PG_CONVERSATION_LOCK = 0x43430002 << 32  # "CC" 2: a conversation's numbering

_IN_BATCH = 500
#: Bound parameters per statement (SQLite's limit is 32,766; MySQL's 65,535).
#: Far below the limits: a compiled multi-row statement grows with its rows
#: (a 10,000-row INSERT is megabytes) and is kept in the driver's statement
#: cache; a flood to a 500-member group made such statements and grew a node
#: 43 MB (test_storms.py). 3,000 is 1,000 log entries or 500 messages a statement.
_MAX_PARAMETERS = 3_000
#: How each dialect's cursor upsert keeps the larger position (fast path).
_CURSOR_UPSERT_TAIL = {
    "sqlite": " ON CONFLICT (user_id, device) DO UPDATE SET pos = max(pos, excluded.pos)",
    "postgresql": (
        " ON CONFLICT (user_id, device) DO UPDATE SET pos = greatest(cursors.pos, excluded.pos)"
    ),
    "mysql": " ON DUPLICATE KEY UPDATE pos = GREATEST(pos, VALUES(pos))",
    "mariadb": " ON DUPLICATE KEY UPDATE pos = GREATEST(pos, VALUES(pos))",
}
#: The positional paramstyles the fast path writes its own SQL text for
#: (sqlite3's ``?``, MySQL drivers' ``%s``, asyncpg's ``$1``).
_FAST_STYLES = frozenset({"qmark", "format", "numeric_dollar"})
#: ``messages`` without ``id`` and ``created_at`` (filled by the database).
_MESSAGE_COLUMNS = Table(
    "messages",
    MetaData(),
    *(Column(c.name, c.type) for c in messages.columns if c.name not in ("id", "created_at")),
)


def _cursor_upsert(dialect: str, rows: list[dict[str, Any]]) -> Executable:
    """INSERT cursors, or move existing ones forward (never back), built by SQLAlchemy."""
    if dialect == "sqlite":
        lite = sqlite_insert(cursors).values(rows)
        return lite.on_conflict_do_update(
            index_elements=[cursors.c.user_id, cursors.c.device],
            set_={"pos": func.max(cursors.c.pos, lite.excluded.pos)},
        )
    if dialect == "postgresql":
        pg = pg_insert(cursors).values(rows)
        return pg.on_conflict_do_update(
            index_elements=[cursors.c.user_id, cursors.c.device],
            set_={"pos": func.greatest(cursors.c.pos, pg.excluded.pos)},
        )
    if dialect in ("mysql", "mariadb"):
        my = mysql_insert(cursors).values(rows)
        return my.on_duplicate_key_update(pos=func.greatest(cursors.c.pos, my.inserted.pos))
    raise ValueError(f"no cursor upsert for the {dialect} dialect")


def append(
    conn: Connection,
    batch: Sequence[NewMessage],
    lock_timeout: int,
    ends: Mapping[int, int] | None = None,
) -> list[Appended]:
    """Append one batch inside the caller's write transaction (contract: store/base.py).

    On MySQL/MariaDB the caller must call ``release_named_locks`` on the same
    connection once the transaction ended (module docstring). ``ends``: the
    last position of some users' logs, known to be current (the SQLite log
    writer's, log_server.py); the others are read (``last_positions``).

    Raises:
        OperationalError: Another append held a lock for ``lock_timeout`` seconds.
    """
    _lock_logs(conn, batch, lock_timeout)
    originals = _originals(conn, batch)
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

    positions = _allocate_positions(conn, fresh, ends or {})
    seqs = _insert_messages(conn, fresh)
    entries = [
        (user_id, pos, seq)
        for seq, placed in zip(seqs, positions, strict=True)
        for user_id, pos in placed
    ]
    if entries:
        _insert_many(conn, inbox, entries)

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


def committed(conn: Connection, after: int, batch: Sequence[NewMessage]) -> dict[str, Appended]:
    """The messages of ``batch`` stored with an id above ``after``, by ``mid``.

    For a batch sent again after its first sending's outcome was lost (the
    SQLite log writer died before answering, log_wire.py): ids grow in
    commit order on SQLite, so ``after``, an id known before the batch was
    first sent, bounds the search to the log's newest messages. Each one's
    positions are found from the end of each recipient's log.
    """
    recipients = {m.mid: m.recipients for m in batch}
    found: dict[str, Appended] = {}
    mids = sorted(recipients)
    for start in range(0, len(mids), _IN_BATCH):
        query = select(messages.c.id, messages.c.mid, messages.c.time, messages.c.body).where(
            messages.c.id > after, messages.c.mid.in_(mids[start : start + _IN_BATCH])
        )
        for row in conn.execute(query).all():
            placed = []
            for user_id in recipients[row.mid]:
                pos = conn.execute(
                    select(inbox.c.pos)
                    .where(inbox.c.user_id == user_id, inbox.c.message_id == row.id)
                    .order_by(inbox.c.pos.desc())
                    .limit(1)
                ).scalar()
                assert pos is not None, "a committed message has every recipient entry"
                placed.append((user_id, int(pos)))
            found[row.mid] = Appended(row.mid, row.id, row.time, bytes(row.body), tuple(placed))
    return found


def pg_lock_keys(users: Iterable[int], conversations: Iterable[str]) -> list[int]:
    """PostgreSQL: the advisory lock keys of these users and conversations, sorted."""
    keys = {_PG_USER_LOCK | (u & 0xFFFFFFFF) for u in users}
    keys.update(_PG_CONVERSATION_LOCK | _hash32(c) for c in conversations)
    return sorted(keys)


def mysql_lock_names(
    database: str, users: Iterable[int], conversations: Iterable[str]
) -> list[str]:
    """MySQL/MariaDB: the named locks (stripes) of these users and conversations, sorted.

    Named locks are per server, not per database: the database's name is in
    each. Striped: MariaDB takes one more of a session's named locks in time
    that grows with those it holds (4,000 in 0.23 s, 8,000 in 1.5 s), so users
    and conversations share ``MYSQL_LOCK_STRIPES`` locks (a shared stripe only
    makes two appends wait for each other).
    """
    prefix = "cc" + hashlib.sha1(database.encode()).hexdigest()[:12]
    stripes = {u % MYSQL_LOCK_STRIPES for u in users}
    stripes.update(_hash32(c) % MYSQL_LOCK_STRIPES for c in conversations)
    return [f"{prefix}:{stripe}" for stripe in sorted(stripes)]


def _lock_logs(conn: Connection, batch: Sequence[NewMessage], timeout: int) -> None:
    """Lock, in sorted order, every user and conversation the batch writes for (docstring).

    Raises:
        OperationalError: A lock was not granted within ``timeout`` seconds.
    """
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return  # one writer at a time already
    users = {u for m in batch for u in (m.sender_id, *m.recipients)}
    conversations = {m.conversation for m in batch}
    if dialect == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(timeout)}s'")
        # unnest yields the array's elements in order, so the locks are taken in key order.
        conn.execute(
            text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) k"),
            {"keys": pg_lock_keys(users, conversations)},
        )
        return
    if dialect in ("mysql", "mariadb"):
        names = mysql_lock_names(conn.engine.url.database or "", users, conversations)
        calls = ", ".join(["GET_LOCK(%s, %s)"] * len(names))
        row = conn.exec_driver_sql(
            f"SELECT {calls}", tuple(v for name in names for v in (name, int(timeout)))
        ).one()
        if not all(got == 1 for got in row):
            raise OperationalError(
                "GET_LOCK", None, Exception(f"log locks not granted in {timeout} s")
            )
        return
    raise ValueError(f"no log locks for the {dialect} dialect")


def release_named_locks(conn: Connection) -> None:
    """MySQL/MariaDB: release the named locks ``append`` took (they outlive transactions)."""
    if conn.dialect.name in ("mysql", "mariadb"):
        conn.exec_driver_sql("DO RELEASE_ALL_LOCKS()")


def _hash32(key: str) -> int:
    """A stable 32-bit number for a conversation key (a collision only serialises more)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big")


@dataclass(frozen=True, slots=True)
class _Inserted:
    """One statement of ``_insert_many``: how many rows it inserted, on SQLite
    the rowid of its last row, and the rows of its RETURNING clause."""

    count: int
    lastrowid: int | None
    returned: list[tuple[Any, ...]]


def _insert_many(
    conn: Connection,
    table: Table,
    rows: list[tuple[Any, ...]],
    returning: tuple[str, ...] = (),
) -> list[_Inserted]:
    """INSERT rows (tuples in ``table.columns`` order) as few multi-row statements as can be.

    One statement per chunk, not one per row: on SQLite every statement step
    releases the GIL and the writer thread must then win it back from a busy
    event loop (sqlite_writer.py). With a paramstyle of ``_FAST_STYLES``
    the statement text is built once per chunk size and the values are bound
    by the driver, with no per-row work in SQLAlchemy; other drivers go
    through SQLAlchemy's own multi-row insert. ``returning`` names columns
    for a RETURNING clause (PostgreSQL, MariaDB).
    """
    columns = [column.name for column in table.columns]
    style = conn.dialect.paramstyle
    if style not in _FAST_STYLES:
        statement = insert(table)
        if returning:
            statement = statement.returning(*(literal_column(name) for name in returning))
        result = conn.execute(statement, [dict(zip(columns, row, strict=True)) for row in rows])
        return [_Inserted(len(rows), None, [tuple(r) for r in result] if returning else [])]
    tail = f" RETURNING {', '.join(returning)}" if returning else ""
    sqlite = conn.dialect.name == "sqlite"  # asyncpg's adapter has no lastrowid to ask
    done: list[_Inserted] = []
    for start, count in _statements(conn.dialect.name, len(rows), len(columns)):
        chunk = rows[start : start + count]
        sql = _multi_row_insert(conn.dialect.name, table.name, tuple(columns), style, len(chunk))
        cursor = _execute(conn, sql + tail, tuple(chain.from_iterable(chunk)))
        try:
            done.append(
                _Inserted(
                    len(chunk),
                    cursor.lastrowid if sqlite else None,
                    [tuple(r) for r in cursor.fetchall()] if returning else [],
                )
            )
        finally:
            cursor.close()
    return done


def _statements(dialect: str, rows: int, columns: int) -> Iterator[tuple[int, int]]:
    """(first row, row count) of each multi-row statement that writes ``rows`` rows.

    At most ``_MAX_PARAMETERS`` parameters a statement. On SQLite, each count
    is also a power of two: a multi-row statement is compiled once per text,
    and with a text for every batch size the writer's statement cache (a
    few entries: compiled statements are large) missed on nearly every
    transaction, so SQLite compiled each INSERT anew. With batches of 5 to 40
    messages, one statement per batch took 6.9-8.7 µs per row, statements of
    2^k rows 4.3-5.3 (``benchmarks/sqlite_statements.py``; docs/performance.md,
    "Statements of 2^k rows").
    Other servers answer each statement in a round trip of their own, so
    there a batch stays one statement.
    """
    most = max(1, _MAX_PARAMETERS // columns)
    start = 0
    while start < rows:
        count = min(most, rows - start)
        if dialect == "sqlite":
            count = 1 << (count.bit_length() - 1)
        yield start, count
        start += count


def _execute(conn: Connection, sql: str, parameters: tuple[Any, ...]) -> Any:
    """Run SQL text of a ``_FAST_STYLES`` paramstyle on the DB-API cursor itself; return it.

    ``exec_driver_sql`` wraps each statement in an execution context and a
    result object, which these statements do not need. With that and the
    writer's pooled connection gone, the SQLite writer thread's time per
    append of 8 messages fell from 375-392 to 243-293 µs (docs/performance.md).
    The caller closes the cursor.
    """
    cursor = conn.connection.cursor()
    cursor.execute(sql, parameters)
    return cursor


@functools.lru_cache(maxsize=64)  # a text per row count, up to ~100 KB each
def _multi_row_insert(
    _dialect: str, table: str, columns: tuple[str, ...], style: str, count: int
) -> str:
    marks = iter(_placeholders(style, len(columns) * count))
    groups = ("(" + ", ".join(next(marks) for _ in columns) + ")" for _ in range(count))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join(groups)


def _placeholders(style: str, count: int) -> list[str]:
    """``count`` positional placeholders of a paramstyle in ``_FAST_STYLES``, in order."""
    if style == "numeric_dollar":
        return [f"${number}" for number in range(1, count + 1)]
    return [{"qmark": "?", "format": "%s"}[style]] * count


def _originals(conn: Connection, batch: Sequence[NewMessage]) -> dict[tuple[int, str], Appended]:
    """Messages stored earlier under a ``(sender_id, cid)`` of this batch."""
    wanted = {(m.sender_id, m.cid) for m in batch if m.cid is not None}
    if not wanted:
        return {}
    query = select(
        messages.c.sender_id,
        messages.c.cid,
        messages.c.mid,
        messages.c.id,
        messages.c.time,
        messages.c.body,
    ).where(
        messages.c.cid.is_not(None),  # lets SQLite and PostgreSQL use the partial index
        messages.c.cid.in_({cid for _, cid in wanted}),
        messages.c.sender_id.in_({sender for sender, _ in wanted}),
    )
    found: dict[tuple[int, str], Appended] = {}
    for row in conn.execute(query):
        key = (row.sender_id, row.cid)
        if key in wanted:
            found[key] = Appended(row.mid, row.id, row.time, bytes(row.body), (), True)
    return found


def _allocate_positions(
    conn: Connection, fresh: Sequence[NewMessage], ends: Mapping[int, int]
) -> list[tuple[tuple[int, int], ...]]:
    """Give every recipient entry the next positions after the user's last one
    (from ``ends`` where it knows it, else read).

    Inside the write transaction the last positions cannot move under us: on
    SQLite one writer at a time, elsewhere the locks of ``_lock_logs``.
    """
    recipients = {r for m in fresh for r in m.recipients}
    unknown = recipients.difference(ends)
    following = {user_id: ends[user_id] + 1 for user_id in recipients if user_id in ends}
    if unknown:
        following.update(
            (user_id, last + 1) for user_id, last in last_positions(conn, unknown).items()
        )
    placed: list[tuple[tuple[int, int], ...]] = []
    for m in fresh:
        entry: list[tuple[int, int]] = []
        for user_id in m.recipients:
            pos = following.get(user_id, 1)
            following[user_id] = pos + 1
            entry.append((user_id, pos))
        placed.append(tuple(entry))
    return placed


def _insert_messages(conn: Connection, fresh: Sequence[NewMessage]) -> list[int]:
    """INSERT the messages; return their ids (each one's ``seq``), in batch order.

    The database numbers them (the rowid on SQLite, a sequence or
    AUTO_INCREMENT elsewhere), so appends that share no user never wait for
    each other to number a message. An id is taken while the append holds
    the locks of its conversation and recipients (``_lock_logs``; on SQLite
    the file), so a later message of a conversation gets a larger id. How
    the ids come back differs:

    * SQLite: one writer at a time, so a multi-row INSERT numbers its rows
      consecutively after the largest id; the last one is ``lastrowid``.
    * PostgreSQL, MariaDB: ``RETURNING id, mid``, matched by ``mid`` (the
      rows may come back in any order; ``mid`` is unique per message).
    * MySQL (no RETURNING, and its AUTO_INCREMENT may interleave the ids of
      concurrent multi-row INSERTs): one INSERT per message, its ``lastrowid``.
    """
    if not fresh:
        return []
    rows = [(m.conversation, m.mid, m.sender_id, m.cid, m.time, m.body) for m in fresh]
    dialect = conn.dialect
    if dialect.name == "sqlite":
        ids: list[int] = []
        for done in _insert_many(conn, _MESSAGE_COLUMNS, rows):
            assert done.lastrowid is not None  # sqlite3 always reports it
            ids.extend(range(done.lastrowid - done.count + 1, done.lastrowid + 1))
        return ids
    if dialect.name == "postgresql" or getattr(dialect, "is_mariadb", False):
        by_mid = {
            mid: number
            for done in _insert_many(conn, _MESSAGE_COLUMNS, rows, returning=("id", "mid"))
            for number, mid in done.returned
        }
        return [by_mid[m.mid] for m in fresh]
    columns = [column.name for column in _MESSAGE_COLUMNS.columns]
    values = [dict(zip(columns, row, strict=True)) for row in rows]
    result: list[int] = []
    for one in values:
        inserted = conn.execute(insert(messages), one).inserted_primary_key
        assert inserted is not None  # an INSERT of one row
        result.append(int(inserted[0]))
    return result


#: Where each of a list of users' logs ends, as one JSON object in one row,
#: per dialect; ``{keys}`` is the list (one parameter: a JSON array, or on
#: PostgreSQL an array). Each user's end is a scalar subquery that walks the
#: inbox's primary key backwards and stops at its first entry: one index probe
#: per user, whatever the log's length. (A ``max(pos) ... GROUP BY user_id``
#: read each user's whole log on SQLite, PostgreSQL and MariaDB: 40 users with
#: 3,000 entries each took 27 ms on SQLite; docs/performance.md.) The text does
#: not depend on how many users are asked for, so each connection compiles it once.
_LAST_POSITIONS = {
    "sqlite": (
        "SELECT json_group_object(value, (SELECT pos FROM inbox WHERE user_id = value"
        " ORDER BY pos DESC LIMIT 1)) FROM json_each({keys})"
    ),
    "postgresql": (
        "SELECT json_object_agg(k, (SELECT pos FROM inbox WHERE user_id = k"
        " ORDER BY pos DESC LIMIT 1)) FROM unnest(CAST({keys} AS integer[])) k"
    ),
    "mysql": (
        "SELECT json_objectagg(k, (SELECT pos FROM inbox WHERE user_id = k"
        " ORDER BY pos DESC LIMIT 1))"
        " FROM json_table({keys}, '$[*]' COLUMNS (k INTEGER PATH '$')) AS ks"
    ),
}
_LAST_POSITIONS["mariadb"] = _LAST_POSITIONS["mysql"]


@functools.lru_cache(maxsize=8)
def last_positions_sql(dialect: str, marker: str) -> str:
    """The statement of ``last_positions`` for ``dialect``, its one parameter
    written as ``marker`` (tests EXPLAIN it)."""
    return _LAST_POSITIONS[dialect].format(keys=marker)


def last_positions(conn: Connection, user_ids: Iterable[int]) -> dict[int, int]:
    """The last position of each user's log (users with an empty log are absent).

    One statement per ``_IN_BATCH`` users, one index probe per user
    (``_LAST_POSITIONS``); with a paramstyle of ``_FAST_STYLES`` it runs on
    the DB-API cursor itself (``_execute``), else through SQLAlchemy.
    """
    found: dict[int, int] = {}
    wanted = sorted(set(user_ids))
    dialect = conn.dialect
    style = dialect.paramstyle
    for start in range(0, len(wanted), _IN_BATCH):
        chunk = wanted[start : start + _IN_BATCH]
        keys: list[int] | str = chunk if dialect.name == "postgresql" else json.dumps(chunk)
        if style in _FAST_STYLES:
            sql = last_positions_sql(dialect.name, _placeholders(style, 1)[0])
            cursor = _execute(conn, sql, (keys,))
            try:
                row = cursor.fetchone()
            finally:
                cursor.close()
            answer = None if row is None else row[0]
        else:
            statement = text(last_positions_sql(dialect.name, ":keys"))
            answer = conn.execute(statement, {"keys": keys}).scalar()
        if answer:
            decoded = json.loads(answer) if isinstance(answer, str) else answer
            found.update((int(k), int(v)) for k, v in decoded.items() if v is not None)
    return found


def save_cursors(conn: Connection, items: Sequence[tuple[int, str, int]]) -> None:
    """Move cursors forward (never back): the largest position per (user, device).

    One multi-row upsert per chunk (one statement step: see ``_insert_many``).
    """
    latest: dict[tuple[int, str], int] = {}
    for user_id, device, pos in items:
        key = (user_id, device)
        latest[key] = max(pos, latest.get(key, 0))
    rows = [(user_id, device, pos) for (user_id, device), pos in sorted(latest.items())]
    dialect = conn.dialect
    style = dialect.paramstyle
    tail = _CURSOR_UPSERT_TAIL.get(dialect.name)
    for start, count in _statements(dialect.name, len(rows), 3):
        chunk = rows[start : start + count]
        if style not in _FAST_STYLES or tail is None:
            values = [{"user_id": u, "device": d, "pos": p} for u, d, p in chunk]
            conn.execute(_cursor_upsert(dialect.name, values))
            continue
        head = _multi_row_insert(
            dialect.name, "cursors", ("user_id", "device", "pos"), style, len(chunk)
        )
        _execute(conn, head + tail, tuple(chain.from_iterable(chunk))).close()
