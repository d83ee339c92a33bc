"""Schema migrations (issue 11): made only by ``clusterchat db upgrade``, checked by every node.

The schema is built and changed by the Alembic migrations in
``store/migrations``; these tests check that what they build is exactly
``schema.py``, that nodes refuse a database that is not at the newest
revision and name the command, that many upgrades and many nodes starting in
the same instant are safe, and that a database clusterchat made before
migrations existed, with its data, is recognised and brought over: undelivered
messages into the log (then delivered at login, in order), stored names
checked with today's rules (issue 9).
"""

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from argon2 import PasswordHasher
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from clusterchat.cluster.node_command import node_argv
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.processes import Child, spawn, stop, wait_for_log
from clusterchat.store import migrate
from clusterchat.store.base import NewMessage
from clusterchat.store.schema import metadata
from clusterchat.store.sql import SqlStore, async_url
from tests.support.classic import PASSWORD, ClassicClient, login
from tests.support.database import migrated
from tests.support.node import NodeFactory
from tests.support.processes import assert_stopped
from tests.support.timing import seconds

pytestmark = pytest.mark.integration

CLUSTERCHAT = [sys.executable, "-m", "clusterchat"]


@pytest.fixture
def blockbuster() -> None:
    """Migrations are a start-up step run on their own (Alembic reads its scripts from
    disk): the blocking-call check of the serving path does not apply."""
    return None


def _db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'chat.db'}"


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return _exec([*CLUSTERCHAT, *args], cwd=cwd)


def _exec(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=seconds(120), cwd=cwd)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind the store runs on."""
    if request.param == "sqlite":
        return _db(tmp_path)
    fixture = "postgres_url" if request.param == "postgresql" else "mariadb_url"
    return str(request.getfixturevalue(fixture))


def test_the_migrations_build_exactly_the_tables_of_schema_py(any_db: str) -> None:
    done = asyncio.run(migrate.upgrade(any_db))
    assert (done.before, done.after, done.adopted) == (None, migrate.head(), None)

    def differences(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async def compare() -> list[Any]:
        engine = create_async_engine(async_url(any_db), poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(differences)
        finally:
            await engine.dispose()

    assert asyncio.run(compare()) == []


def test_messages_move_to_arrival_order_with_every_log_and_conversation_intact(
    any_db: str,
) -> None:
    """0004: messages keyed by (conversation, seq) get ids in that order; every user's log
    keeps its positions and bodies, the client ids still find their messages, and new
    messages are numbered after every old one."""
    asyncio.run(migrate.upgrade(any_db, to="0003"))
    users = [(1, "zhang"), (2, "li"), (3, "wang")]
    # (conversation, seq, mid, sender, cid, body): stored out of (conversation, seq) order.
    old = [
        ("g:1", 1, "m-g1", 1, None, b"group one"),
        ("u:1:2", 2, "m-12b", 2, "c-2", b"li to zhang"),
        ("u:1:2", 1, "m-12a", 1, "c-1", b"zhang to li"),
        ("u:2:3", 1, "m-23", 3, None, b"wang to li"),
        ("g:1", 2, "m-g2", 2, None, b"group two"),
    ]
    # (user, pos, conversation, seq)
    entries = [
        (2, 1, "u:1:2", 1),
        (2, 2, "g:1", 1),
        (3, 1, "g:1", 1),
        (1, 1, "u:1:2", 2),
        (2, 3, "u:2:3", 1),
        (1, 2, "g:1", 2),
        (3, 2, "g:1", 2),
    ]

    async def fill() -> None:
        engine = create_async_engine(async_url(any_db), poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                for uid, name in users:
                    await conn.execute(
                        text(
                            "INSERT INTO users (id, name, name_key, password_hash)"
                            " VALUES (:id, :name, :name, 'h')"
                        ),
                        {"id": uid, "name": name},
                    )
                for conversation, seq, mid, sender, cid, body in old:
                    await conn.execute(
                        text(
                            "INSERT INTO messages (conversation, seq, mid, sender_id, cid, time,"
                            " body) VALUES (:c, :s, :m, :u, :cid, 't', :b)"
                        ),
                        {"c": conversation, "s": seq, "m": mid, "u": sender, "cid": cid, "b": body},
                    )
                for uid, pos, conversation, seq in entries:
                    await conn.execute(
                        text(
                            "INSERT INTO inbox (user_id, pos, conversation, seq)"
                            " VALUES (:u, :p, :c, :s)"
                        ),
                        {"u": uid, "p": pos, "c": conversation, "s": seq},
                    )
        finally:
            await engine.dispose()

    asyncio.run(fill())
    done = asyncio.run(migrate.upgrade(any_db))
    assert (done.before, done.after) == ("0003", migrate.head())

    async def check() -> None:
        store = SqlStore(any_db, pool_size=2, lock_timeout=5)
        try:
            logs = {uid: await store.read(uid, 0, 100) for uid, _ in users}
            assert {uid: [(e.pos, e.body) for e in log] for uid, log in logs.items()} == {
                1: [(1, b"li to zhang"), (2, b"group two")],
                2: [(1, b"zhang to li"), (2, b"group one"), (3, b"wang to li")],
                3: [(1, b"group one"), (2, b"group two")],
            }
            assert await store.heads([1, 2, 3]) == {1: 2, 2: 3, 3: 2}
            again = await store.append(
                [
                    NewMessage("m-12a-retry", 1, "u:1:2", (2,), "t", b"retry", "c-1"),
                    NewMessage("m-12c", 1, "u:1:2", (2,), "t", b"after", "c-3"),
                    NewMessage("m-g3", 3, "g:1", (1, 2), "t", b"group three"),
                ]
            )
        finally:
            await store.close()
        retry, after, group = again
        assert retry.duplicate
        assert (retry.mid, retry.body) == ("m-12a", b"zhang to li")
        assert after.positions == ((2, 4),)
        assert group.positions == ((1, 3), (2, 5))
        # Each conversation's ids keep its old order, and new ones come after every old one.
        engine = create_async_engine(async_url(any_db), poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text("SELECT id, mid FROM messages"))).all()
        finally:
            await engine.dispose()
        ids = {mid: number for number, mid in rows}
        assert ids["m-12a"] == retry.seq
        assert ids["m-12a"] < ids["m-12b"] < ids["m-12c"]
        assert ids["m-g1"] < ids["m-g2"] < ids["m-g3"]
        assert max(ids[m] for m in ("m-g1", "m-g2", "m-12a", "m-12b", "m-23")) < after.seq
        assert after.seq < group.seq

    asyncio.run(check())


def test_a_failing_0004_on_sqlite_leaves_the_database_at_0003(tmp_path: Path) -> None:
    """The renames, creates and copies of 0004 are one transaction on SQLite: a table in
    the way of a rename fails it after the first statements, and nothing has changed."""
    path = tmp_path / "chat.db"
    url = f"sqlite:///{path}"
    asyncio.run(migrate.upgrade(url, to="0003"))
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO users (id, name, name_key, password_hash) VALUES (1, 'a', 'a', 'h')"
        )
        conn.execute(
            "INSERT INTO messages (conversation, seq, mid, sender_id, cid, time, body)"
            " VALUES ('u:1:1', 1, 'm', 1, 'c', 't', x'7b7d')"
        )
        conn.execute("CREATE TABLE messages_0003 (x INTEGER)")  # in the way
    with pytest.raises(migrate.DatabaseUnavailable, match="messages_0003"):
        asyncio.run(migrate.upgrade(url))
    assert asyncio.run(migrate.state(url)).current == "0003"
    with sqlite3.connect(path) as conn:
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(messages)")}
        assert "uq_messages_sender_cid" in indexes
        assert conn.execute("SELECT mid, seq FROM messages").fetchall() == [("m", 1)]
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert "inbox_0003" not in tables


def test_db_upgrade_and_current_say_what_they_did(tmp_path: Path) -> None:
    url = _db(tmp_path)
    current = _run("db", "current", "--db", url)
    assert current.returncode == 0, current.stderr
    assert "no tables yet; run: clusterchat db upgrade --db" in current.stdout
    first = _run("db", "upgrade", "--db", url)
    assert first.returncode == 0, first.stderr
    assert f"created at revision {migrate.head()}" in first.stdout
    again = _run("db", "upgrade", "--db", url)
    assert f"already at revision {migrate.head()}, the newest" in again.stdout
    assert f"revision {migrate.head()}, the newest" in _run("db", "current", "--db", url).stdout
    refused = _run("db", "upgrade", "--db", "postgresql://chat:hunter2@127.0.0.1:1/chat")
    assert refused.returncode == 1
    assert "hunter2" not in refused.stderr
    assert "postgresql://chat:***@127.0.0.1:1/chat" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_node_refuses_a_database_that_is_not_at_the_newest_revision(tmp_path: Path) -> None:
    """Empty, older, made before versions or newer: exit 2, naming what to run; no table made."""
    url = _db(tmp_path)
    node = node_argv(0, db_url=url)
    empty = _exec(node)
    assert empty.returncode == 2
    assert f"no tables yet; run: clusterchat db upgrade --db {url}" in empty.stderr
    assert "Traceback" not in empty.stderr
    assert asyncio.run(migrate.state(url)).tables is False  # the node made nothing

    asyncio.run(migrate.upgrade(url, to="0002"))
    older = _exec(node)
    assert older.returncode == 2
    assert f"at revision 0002 and this node needs {migrate.head()}" in older.stderr
    assert "clusterchat db upgrade --db" in older.stderr

    with sqlite3.connect(tmp_path / "chat.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    newer = _exec(node)
    assert newer.returncode == 2
    assert "at revision 9999, newer than this clusterchat knows" in newer.stderr
    refused = _run("db", "upgrade", "--db", url)
    assert refused.returncode == 1
    assert "newer than this clusterchat" in refused.stderr


def test_four_upgrades_at_once_run_each_migration_once(any_db: str) -> None:
    url = any_db
    argv = [*CLUSTERCHAT, "db", "upgrade", "--db", url]
    children = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=seconds(120))
        assert child.returncode == 0, err
        outputs.append(out)
    assert sum("created at revision" in out for out in outputs) == 1
    assert sum("already at revision" in out for out in outputs) == 3
    asyncio.run(migrate.require_current(url))


def test_four_nodes_started_in_the_same_instant(tmp_path: Path) -> None:
    """On an old database all four refuse and change nothing; once upgraded all four serve."""
    url = _db(tmp_path)
    asyncio.run(migrate.upgrade(url, to="0002"))
    argv = node_argv(0, db_url=url)
    gate = threading.Barrier(4)
    results: list[subprocess.CompletedProcess[str]] = []

    def start() -> None:
        gate.wait()
        results.append(subprocess.run(argv, capture_output=True, text=True, timeout=seconds(60)))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.returncode for r in results] == [2, 2, 2, 2], [r.stderr for r in results]
    assert asyncio.run(migrate.state(url)).current == "0002"

    assert _run("db", "upgrade", "--db", url).returncode == 0
    children: list[Child] = []
    try:
        ports = [free_port("127.0.0.1") for _ in range(4)]
        for number, port in enumerate(ports, 1):  # all four before waiting for any
            argv = node_argv(port, db_url=url)
            children.append(spawn(f"node-{number}", argv, log_path=tmp_path / f"n{number}.log"))
        for child, port in zip(children, ports, strict=True):
            wait_for_log(child, f"listening on 127.0.0.1:{port}", seconds(30))
    finally:
        for child in children:
            stop(child, timeout=seconds(10))
        for child in children:
            assert_stopped(child)


def _log_out(client: ClassicClient) -> None:
    """End the session cleanly: the node saves how far it read before it answers."""
    assert client.request({"msgid": 3})["msgid"] == 103
    client.close()


def _old_database(tmp_path: Path, revision: str) -> Path:
    """A database as clusterchat made it before migrations: ``revision``'s tables, unversioned."""
    path = tmp_path / "chat.db"
    asyncio.run(migrate.upgrade(f"sqlite:///{path}", to=revision))
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE alembic_version")
    return path


def test_a_database_from_before_the_log_keeps_its_undelivered_messages(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    """Undelivered pushes become log entries: the recipient gets them at login, in order."""
    path = _old_database(tmp_path, "0001")
    password_hash = PasswordHasher(time_cost=1, memory_cost=1024).hash(PASSWORD)
    pushes = [
        (2, "m1", {"msgid": 6, "id": 1, "name": "zhang", "toid": 2, "msg": "你好", "time": "t1"}),
        (
            2,
            "m2",
            {"msgid": 10, "id": 1, "name": "zhang", "groupid": 1, "msg": "all", "time": "t2"},
        ),
        (
            3,
            "m2",
            {"msgid": 10, "id": 1, "name": "zhang", "groupid": 1, "msg": "all", "time": "t2"},
        ),
        (2, "m3", {"msgid": 6, "id": 3, "name": "wang", "toid": 2, "msg": "later", "time": "t3"}),
    ]
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO users (id, name, password_hash) VALUES (?, ?, ?)",
            [(1, "zhang", password_hash), (2, "li", password_hash), (3, "wang", password_hash)],
        )
        conn.execute("INSERT INTO chat_groups (id, name, description) VALUES (1, 'tea', '')")
        conn.executemany(
            "INSERT INTO group_members (group_id, user_id, role) VALUES (1, ?, ?)",
            [(1, "creator"), (2, "normal"), (3, "normal")],
        )
        conn.executemany(
            "INSERT INTO undelivered (user_id, mid, payload) VALUES (?, ?, ?)",
            [(user, mid, json.dumps(push).encode()) for user, mid, push in pushes],
        )

    done = _run("db", "upgrade", "--db", f"sqlite:///{path}")
    assert done.returncode == 0, done.stderr
    assert "made before schema versions, recognised as revision 0001" in done.stdout
    assert "upgraded from revision 0001" in done.stdout
    with sqlite3.connect(path) as conn:
        # The group message is stored once, for its two recipients.
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM inbox").fetchone() == (4,)

    node = node_factory(db_url=f"sqlite:///{path}")
    li, answer = login(node, 2)
    assert [json.loads(m)["msg"] for m in answer["offlinemsg"]] == ["你好", "all", "later"]
    _log_out(li)
    wang, answer = login(node, 3)
    assert [json.loads(m)["msg"] for m in answer["offlinemsg"]] == ["all"]
    _log_out(wang)
    li, answer = login(node, 2)
    assert "offlinemsg" not in answer  # delivered once
    li.close()


def test_names_stored_before_the_rules_are_checked_by_the_migration(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    """Valid names get their key (and their normal form); a name the rules refuse or a
    look-alike of an earlier one is kept, reserves nothing, and is reported."""
    path = _old_database(tmp_path, "0002")
    password_hash = PasswordHasher(time_cost=1, memory_cost=1024).hash(PASSWORD)
    names = [
        (1, "alice"),
        (2, "\u0430lice"),  # a Cyrillic a: looks like alice
        (3, "\uff43\uff41\uff52\uff4f\uff4c"),  # fullwidth carol
        (4, "bob\u202e"),  # a bidi override: refused today
        (5, "dave"),
    ]
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO users (id, name, password_hash) VALUES (?, ?, ?)",
            [(uid, name, password_hash) for uid, name in names],
        )
        conn.executemany(
            "INSERT INTO chat_groups (id, name, description) VALUES (?, ?, '')",
            [(1, "Tea"), (2, "TEA")],
        )
        conn.executemany(
            "INSERT INTO group_members (group_id, user_id, role) VALUES (?, 1, 'creator')",
            [(1,), (2,)],
        )

    done = _run("db", "upgrade", "--db", f"sqlite:///{path}")
    assert done.returncode == 0, done.stderr
    assert "recognised as revision 0002" in done.stdout
    assert "user 2 '\u0430lice' looks like user 1" in done.stderr
    assert "user 4 'bob\\u202e'" in done.stderr
    assert "group 2 'TEA' looks like group 1" in done.stderr
    with sqlite3.connect(path) as conn:
        rows = dict(conn.execute("SELECT id, name FROM users").fetchall())
        keys = dict(conn.execute("SELECT id, name_key FROM users").fetchall())
    assert rows[3] == "carol"  # stored in its normal form
    assert rows[2] == "\u0430lice"  # kept as it was
    assert keys[2] == "!unchecked:2"
    assert keys[4] == "!unchecked:4"

    node = node_factory(db_url=f"sqlite:///{path}")
    for uid in (2, 3, 4):  # everyone still logs in
        client, answer = login(node, uid)
        client.close()
    client = ClassicClient(node.host, node.port)
    try:
        for taken in ("ALICE", "Carol", "Dave"):
            answer = client.request({"msgid": 4, "name": taken, "password": "pw"})
            assert answer["errno"] == 1, answer
        answer = client.request({"msgid": 4, "name": "bob", "password": "pw"})
        assert answer["errno"] == 0, answer  # bob\u202e reserves nothing
    finally:
        client.close()


@pytest.mark.parametrize(
    ("release", "revision", "waiting"),
    [
        ("6e2d545", "0001", ["stored in the first release"]),
        ("0a5d0ec", "0003", ["while you were away"]),
    ],
)
def test_a_database_made_by_an_earlier_release_is_upgraded_in_place(
    release: str,
    revision: str,
    waiting: list[str],
    node_factory: NodeFactory,
    tmp_path: Path,
) -> None:
    """The schema a release made with ``create_all`` (tests/data/release-*.sql, dumped from
    it), with its rows: recognised, upgraded, and its users log in to what they had."""
    path = tmp_path / "chat.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            (Path(__file__).parent.parent / "data" / f"release-{release}.sql").read_text()
        )
    url = f"sqlite:///{path}"
    done = _run("db", "upgrade", "--db", url)
    assert done.returncode == 0, done.stderr
    assert f"recognised as revision {revision}" in done.stdout
    node = node_factory(db_url=url)
    bob, answer = login(node, 2)
    assert [json.loads(m)["msg"] for m in answer.get("offlinemsg", [])] == waiting
    assert [json.loads(f)["id"] for f in answer["friends"]] == [1]
    bob.close()


def test_an_sqlite_database_is_made_in_wal_mode_with_small_pages(tmp_path: Path) -> None:
    """Found by the 2,000-login storm in CI: a new file in rollback-journal mode was
    switched to WAL by whichever node connected first, and the other node's first
    connection failed at once with "database is locked" (errno 50 for a register).
    Pages of 2,048 bytes: cheaper appends to the log (``SQLITE_FILE_PRAGMAS``),
    and a page size can only be chosen before the file has its first table."""
    url = _db(tmp_path)
    assert _run("db", "upgrade", "--db", url).returncode == 0
    with sqlite3.connect(tmp_path / "chat.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA page_size").fetchone() == (2048,)
    template_copy = migrated(f"sqlite:///{tmp_path / 'copy.db'}")
    assert template_copy.endswith("copy.db")
    with sqlite3.connect(tmp_path / "copy.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA page_size").fetchone() == (2048,)
