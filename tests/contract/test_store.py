"""The Store contract (src/clusterchat/store/base.py), run against every SQL dialect.

``STORES`` lists the databases: SQLite in ``tmp_path``, and a fresh database
on the session's private PostgreSQL and MariaDB servers (tests/support/postgres.py,
tests/support/mariadb.py), which carry the ``integration`` mark.
"""

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from clusterchat.store import log_sql
from clusterchat.store.base import Appended, Group, Member, NameTaken, NewMessage, Store, User
from clusterchat.store.sql import SqlStore, async_url
from tests.support.database import migrated
from tests.support.defaults import SETTINGS

#: The dialects; ``store_url`` turns each into the URL of an empty database.
STORES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgresql", marks=pytest.mark.integration),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.integration),
]


async def _open(url: str, lock_timeout: int = SETTINGS.db_lock_timeout) -> SqlStore:
    # The engine resolves the file path when built: once, off the event loop.
    await asyncio.to_thread(migrated, url)
    store = await asyncio.to_thread(
        partial(SqlStore, url, pool_size=SETTINGS.db_pool_size, lock_timeout=lock_timeout)
    )
    return store


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database of one dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """A SqlStore with its schema, closed after the test."""
    sql = await _open(store_url)
    yield sql
    await sql.close()


# --- users -------------------------------------------------------------------------------


async def test_created_user_can_be_read_back(store: Store) -> None:
    """create_user returns a fresh id under which get_user finds name and hash."""
    first = await store.create_user("alice", "hash-a")
    second = await store.create_user("bob", "hash-b")
    assert first != second
    assert await store.get_user(first) == User(first, "alice", "hash-a")
    assert await store.get_user(second) == User(second, "bob", "hash-b")


async def test_unknown_user_is_none(store: Store) -> None:
    """get_user of an id nobody has is None."""
    assert await store.get_user(4242) is None


async def test_duplicate_user_name_raises_name_taken(store: Store) -> None:
    """A second user of the same name raises NameTaken and leaves the first intact."""
    alice = await store.create_user("alice", "hash-a")
    with pytest.raises(NameTaken):
        await store.create_user("alice", "hash-b")
    assert await store.get_user(alice) == User(alice, "alice", "hash-a")


async def test_user_names_compare_exactly(store: Store) -> None:
    """Names differing only in case are different users."""
    lower = await store.create_user("alice", "h")
    upper = await store.create_user("Alice", "h")
    assert lower != upper


async def test_unicode_names_round_trip(store: Store) -> None:
    """Chinese, accented and emoji names come back byte for byte, and stay unique."""
    names = ["张三", "Zoë", "🙂 smile", "ﬁ ligature"]
    ids = [await store.create_user(name, "h") for name in names]
    for user_id, name in zip(ids, names, strict=True):
        user = await store.get_user(user_id)
        assert user is not None
        assert user.name == name
    with pytest.raises(NameTaken):
        await store.create_user("张三", "h")
    group = await store.create_group("讨论组", "中文描述", ids[0])
    assert await store.get_group(group) == Group(group, "讨论组", "中文描述")


# --- friends -----------------------------------------------------------------------------


async def test_friendship_is_symmetric(store: Store) -> None:
    """add_friendship(a, b) makes each the friend of the other, without password hashes."""
    alice = await store.create_user("alice", "hash-a")
    bob = await store.create_user("bob", "hash-b")
    assert await store.add_friendship(alice, bob) is True
    assert await store.friends_of(alice) == [User(bob, "bob")]
    assert await store.friends_of(bob) == [User(alice, "alice")]


async def test_friendship_added_twice_returns_false(store: Store) -> None:
    """Adding an existing friendship, in either order, returns False and changes nothing."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    assert await store.add_friendship(alice, bob) is True
    assert await store.add_friendship(alice, bob) is False
    assert await store.add_friendship(bob, alice) is False
    assert await store.friends_of(alice) == [User(bob, "bob")]


async def test_friends_come_by_id(store: Store) -> None:
    """friends_of lists friends ordered by id; someone without friends has none."""
    ids = [await store.create_user(name, "h") for name in ("a", "b", "c", "d")]
    for other in reversed(ids[1:]):
        await store.add_friendship(ids[0], other)
    assert [u.id for u in await store.friends_of(ids[0])] == ids[1:]
    assert await store.friends_of(ids[1]) == [User(ids[0], "a")]
    lonely = await store.create_user("lonely", "h")
    assert await store.friends_of(lonely) == []


# --- groups ------------------------------------------------------------------------------


async def test_created_group_has_its_creator(store: Store) -> None:
    """create_group stores name and description and makes the creator its first member."""
    alice = await store.create_user("alice", "h")
    group = await store.create_group("team", "the team", alice)
    assert await store.get_group(group) == Group(group, "team", "the team")
    assert await store.members(group) == [Member(alice, "alice", "creator")]


async def test_unknown_group_is_none(store: Store) -> None:
    """get_group of an id nobody created is None, and it has no members."""
    assert await store.get_group(4242) is None
    assert await store.members(4242) == []


async def test_duplicate_group_name_raises_name_taken(store: Store) -> None:
    """A second group of the same name raises NameTaken and leaves no half-made group."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    group = await store.create_group("team", "", alice)
    with pytest.raises(NameTaken):
        await store.create_group("team", "other", bob)
    assert await store.groups_of(bob) == []
    assert await store.members(group) == [Member(alice, "alice", "creator")]


async def test_add_member_twice_returns_false(store: Store) -> None:
    """add_member returns True once, then False, also for the creator."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    group = await store.create_group("team", "", alice)
    assert await store.add_member(group, bob) is True
    assert await store.add_member(group, bob) is False
    assert await store.add_member(group, alice) is False
    assert await store.members(group) == [
        Member(alice, "alice", "creator"),
        Member(bob, "bob", "normal"),
    ]


async def test_members_come_by_user_id(store: Store) -> None:
    """members lists by user id whatever the order of joining."""
    ids = [await store.create_user(name, "h") for name in ("a", "b", "c", "d")]
    group = await store.create_group("team", "", ids[2])
    for user_id in (ids[3], ids[0], ids[1]):
        await store.add_member(group, user_id)
    assert [m.user_id for m in await store.members(group)] == ids


async def test_groups_of_lists_each_group_with_all_members(store: Store) -> None:
    """groups_of returns only the user's groups, each with every member (the user included)."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    carol = await store.create_user("carol", "h")
    team = await store.create_group("team", "t", alice)
    club = await store.create_group("club", "c", carol)
    other = await store.create_group("other", "o", carol)
    await store.add_member(team, bob)
    await store.add_member(club, alice)
    assert await store.groups_of(alice) == [
        (
            Group(team, "team", "t"),
            [Member(alice, "alice", "creator"), Member(bob, "bob", "normal")],
        ),
        (
            Group(club, "club", "c"),
            [Member(alice, "alice", "normal"), Member(carol, "carol", "creator")],
        ),
    ]
    assert [g.id for g, _ in await store.groups_of(carol)] == [club, other]
    assert await store.groups_of(4242) == []


async def test_memberships_lists_the_group_ids_of_each_user(store: Store) -> None:
    """memberships answers for many users at once; users in no group are left out."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    carol = await store.create_user("carol", "h")
    team = await store.create_group("team", "t", alice)
    club = await store.create_group("club", "c", carol)
    await store.add_member(club, alice)
    assert await store.memberships([alice, bob, carol, 4242]) == {
        alice: sorted([team, club]),
        carol: [club],
    }
    assert await store.memberships([]) == {}


# --- the message log -------------------------------------------------------------------


def _msg(
    mid: str, sender: int, recipients: tuple[int, ...], conv: str = "c", cid: str | None = None
) -> NewMessage:
    return NewMessage(mid, sender, conv, recipients, "2026-12-01 10:00:00", mid.encode(), cid)


async def test_append_gives_consecutive_positions_per_recipient(store: Store) -> None:
    """Each recipient's entries get positions 1, 2, 3... in append order; read pages them."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    carol = await store.create_user("carol", "h")
    first = await store.append([_msg("m1", alice, (bob,)), _msg("m2", alice, (bob, carol))])
    second = await store.append([_msg("m3", carol, (bob,))])
    assert [r.positions for r in first + second] == [
        ((bob, 1),),
        ((bob, 2), (carol, 1)),
        ((bob, 3),),
    ]
    assert [(e.pos, e.body) for e in await store.read(bob, 0, 10)] == [
        (1, b"m1"),
        (2, b"m2"),
        (3, b"m3"),
    ]
    assert [e.pos for e in await store.read(bob, 1, 1)] == [2]
    assert await store.read(alice, 0, 10) == []
    assert await store.heads([alice, bob, carol, 4242]) == {alice: 0, bob: 3, carol: 1}
    assert await store.heads([]) == {}


async def test_a_batch_of_many_statements_keeps_order_ids_and_positions(store: Store) -> None:
    """777 messages (two recipients each: 1,554 entries) and 777 cursors in one
    call take several multi-row statements on every dialect (SQLite: of 2^k
    rows each); ids, positions and bodies still follow the batch's order."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    carol = await store.create_user("carol", "h")
    batch = [_msg(f"m{i}", alice, (bob, carol) if i % 2 else (carol, bob)) for i in range(777)]
    results = await store.append(batch)
    assert [r.mid for r in results] == [m.mid for m in batch]
    seqs = [r.seq for r in results]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 777
    assert [dict(r.positions)[bob] for r in results] == list(range(1, 778))
    assert [dict(r.positions)[carol] for r in results] == list(range(1, 778))
    entries = await store.read(bob, 0, 1000)
    assert [(e.pos, e.body) for e in entries] == [(i + 1, f"m{i}".encode()) for i in range(777)]
    await store.save_cursors([(alice, f"d{i}", i + 1) for i in range(777)])
    assert await store.load_cursors(alice) == {f"d{i}": i + 1 for i in range(777)}


async def test_append_numbers_each_conversation(store: Store) -> None:
    """``seq`` increases within each conversation in append order, across batches,
    and no two messages share one (it is the log's count of messages)."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    results = await store.append(
        [
            _msg("a", alice, (bob,), "x"),
            _msg("b", alice, (bob,), "y"),
            _msg("c", bob, (alice,), "x"),
        ]
    )
    results += await store.append([_msg("d", alice, (bob,), "x")])
    seq = {r.mid: r.seq for r in results}
    assert len(set(seq.values())) == 4
    assert seq["a"] < seq["c"] < seq["d"]


async def test_a_repeated_cid_returns_the_original_and_stores_nothing(store: Store) -> None:
    """The same (sender, cid) is stored once, in one batch or across batches."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    [one, again] = await store.append(
        [_msg("m1", alice, (bob,), cid="k"), _msg("m2", alice, (bob,), cid="k")]
    )
    [later] = await store.append([_msg("m3", alice, (bob,), cid="k")])
    [other] = await store.append([_msg("m4", bob, (alice,), cid="k")])  # another sender
    assert not one.duplicate
    assert again.duplicate
    assert later.duplicate
    assert not other.duplicate
    assert (again.mid, again.seq, again.time, again.positions) == (one.mid, one.seq, one.time, ())
    assert (later.mid, later.seq) == (one.mid, one.seq)
    assert [e.body for e in await store.read(bob, 0, 10)] == [b"m1"]


async def test_log_bodies_round_trip_any_bytes(store: Store) -> None:
    """Bodies come back byte for byte (UTF-8 text, NUL and high bytes included)."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    bodies = ["你好 🌍".encode(), b"\x00\xff\xfe", b"x" * 20_000]
    batch = [NewMessage(f"m{i}", alice, "c", (bob,), "t", body) for i, body in enumerate(bodies)]
    await store.append(batch)
    assert [e.body for e in await store.read(bob, 0, 10)] == bodies


async def test_a_body_larger_than_64_kib_is_kept_whole(store: Store) -> None:
    """A push bigger than a MySQL BLOB (65,535 bytes) round-trips: max_frame and
    max_message may be raised, and 8,192 characters of emoji are 32 KiB already."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    body = "🙂".encode() * 50_000  # 200,000 bytes
    await store.append([NewMessage("big", alice, "c", (bob,), "t", body)])
    assert [e.body for e in await store.read(bob, 0, 10)] == [body]


async def test_unicode_client_ids_and_devices_round_trip(store: Store) -> None:
    """Chinese and emoji in a client message id and a device name are kept exactly."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    [first] = await store.append([_msg("m1", alice, (bob,), cid="消息🙂")])
    [again] = await store.append([_msg("m2", alice, (bob,), cid="消息🙂")])
    [other] = await store.append([_msg("m3", alice, (bob,), cid="消息🙃")])
    assert (first.duplicate, again.duplicate, other.duplicate) == (False, True, False)
    await store.save_cursors([(bob, "手机📱", 2), (bob, "电脑💻", 1)])
    assert await store.load_cursors(bob) == {"手机📱": 2, "电脑💻": 1}


async def test_cursors_only_move_forward(store: Store) -> None:
    """Saved cursors keep the larger position, per user and device."""
    alice = await store.create_user("alice", "h")
    assert await store.load_cursors(alice) == {}
    await store.save_cursors([(alice, "", 5), (alice, "phone", 2), (alice, "", 3)])
    await store.save_cursors([(alice, "", 4), (alice, "phone", 7)])
    await store.save_cursors([])
    assert await store.load_cursors(alice) == {"": 5, "phone": 7}


async def test_finding_where_logs_end_reads_one_entry_per_user(
    store_url: str, store: Store
) -> None:
    """Every append and sweep asks where recipients' logs end: the work must not
    grow with how long the logs are (a GROUP BY max read each user's whole log:
    40 users x 3,000 entries took 24 ms on SQLite, docs/performance.md)."""
    users = [await store.create_user(f"u{i}", "h") for i in range(4)]
    short, long = users[:2], users[2:]
    await store.append([_msg(f"s{u}", u, (u,)) for u in short])
    for start in range(0, 600, 200):
        await store.append([_msg(f"l{n}", long[0], tuple(long)) for n in range(start, start + 200)])
    assert await store.heads(users) == {short[0]: 1, short[1]: 1, long[0]: 600, long[1]: 600}

    work_short = await _work_of_last_positions(store_url, short)
    work_long = await _work_of_last_positions(store_url, long)
    assert work_long <= 2 * work_short + 10, (work_short, work_long)


async def _work_of_last_positions(url: str, users: list[int]) -> int:
    """What ``log_sql.last_positions(users)`` costs the database, in a unit that
    counts every log entry it reads: SQLite's virtual machine steps, InnoDB's
    index reads, PostgreSQL's index entries read in the transaction."""
    if make_url(url).get_backend_name() == "sqlite":
        return await asyncio.to_thread(_sqlite_steps, url, users)
    engine = create_async_engine(async_url(url))
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(_server_reads, users)
    finally:
        await engine.dispose()


def _sqlite_steps(url: str, users: list[int]) -> int:
    engine = create_engine(url)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    try:
        with engine.begin() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.set_progress_handler(count, 1)
            log_sql.last_positions(conn, users)
            raw.set_progress_handler(None, 1)
    finally:
        engine.dispose()
    return steps


def _server_reads(conn: Connection, users: list[int]) -> int:
    if conn.dialect.name == "postgresql":
        statement = log_sql.last_positions_sql("postgresql", ":keys")
        plan = conn.execute(
            text(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}"), {"keys": users}
        ).scalar_one()
        return _inbox_rows(plan[0]["Plan"])
    reads = text(
        "SELECT sum(variable_value) FROM information_schema.session_status WHERE variable_name"
        " IN ('HANDLER_READ_KEY', 'HANDLER_READ_LAST', 'HANDLER_READ_NEXT', 'HANDLER_READ_PREV')"
    )
    before = conn.execute(reads).scalar_one()
    log_sql.last_positions(conn, users)
    return int(conn.execute(reads).scalar_one()) - int(before)


def _inbox_rows(node: dict[str, Any]) -> int:
    """The rows a PostgreSQL plan (EXPLAIN ANALYZE) read from ``inbox``, in all its loops."""
    own = 0
    if node.get("Relation Name") == "inbox":
        own = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
        own = max(own, node["Actual Loops"])  # a probe that found nothing still read the index
    return own + sum(_inbox_rows(child) for child in node.get("Plans", []))


# --- several engines on one database -----------------------------------------------------


async def test_two_engines_write_concurrently_without_loss(store_url: str) -> None:
    """Two stores (two nodes' engines) writing at once lose nothing and never report a lock."""
    first, second = await _open(store_url), await _open(store_url)
    try:
        users = [await first.create_user(f"user{i}", "h") for i in range(4)]
        per_store = 300

        async def write(store: SqlStore, tag: str) -> None:
            await asyncio.gather(
                *(
                    store.append([_msg(f"{tag}-{i}", users[0], (users[i % 4],))])
                    for i in range(per_store)
                ),
                *(store.create_user(f"{tag}-new-{i}", "h") for i in range(20)),
                *(store.add_friendship(users[0], users[1 + i % 3]) for i in range(6)),
            )

        await asyncio.gather(write(first, "one"), write(second, "two"))

        entries = [e for user in users for e in await first.read(user, 0, 10_000)]
        mids = [e.body.decode() for e in entries]
        for user in users:  # positions stay consecutive under concurrent appends
            positions = [e.pos for e in await first.read(user, 0, 10_000)]
            assert positions == list(range(1, len(positions) + 1))
        assert len(mids) == len(set(mids)) == 2 * per_store
        assert {m.split("-")[0] for m in mids} == {"one", "two"}
        for tag in ("one", "two"):  # each engine's own rows are distinct and complete
            assert {m for m in mids if m.startswith(tag)} == {
                f"{tag}-{i}" for i in range(per_store)
            }
        assert len(await second.friends_of(users[0])) == 3
        for name in (f"{tag}-new-{i}" for tag in ("one", "two") for i in range(20)):
            with pytest.raises(NameTaken):  # every concurrent registration was kept
                await second.create_user(name, "h")
    finally:
        await first.close()
        await second.close()


async def test_two_engines_append_to_the_same_users_at_once(store_url: str) -> None:
    """Two nodes' stores appending for the same users and conversations at once keep the log.

    Batches of one-to-one and group messages whose recipients overlap, listed
    in different orders, from two engines at once: no append fails (no
    deadlock, no duplicate key), every message is stored once with one entry
    per recipient, each user's positions are 1, 2, 3... without holes, no two
    messages share a seq, the results name the positions the log holds, two
    messages that share recipients are in the same order in each of their
    logs, and every log holds each conversation's messages in seq order.
    """
    first, second = await _open(store_url), await _open(store_url)
    try:
        users = [await first.create_user(f"user{i}", "h") for i in range(6)]
        rounds = 40

        def batch(tag: str, n: int) -> list[NewMessage]:
            a, b, c, d = (users[(n + k) % 6] for k in range(4))
            members = (b, c, d) if n % 2 else (d, c, b)  # shared recipients, either order
            return [
                _msg(f"{tag}-{n}-pair", a, (b,), conv=f"u:{min(a, b)}:{max(a, b)}"),
                _msg(f"{tag}-{n}-group", a, members, conv=f"g:{n % 3}"),
                _msg(f"{tag}-{n}-back", b, (a,), conv=f"u:{min(a, b)}:{max(a, b)}"),
            ]

        async def write(store: SqlStore, tag: str) -> list[tuple[NewMessage, Appended]]:
            batches = [batch(tag, n) for n in range(rounds)]
            results = await asyncio.gather(*(store.append(b) for b in batches))
            return [
                (m, r)
                for b, rs in zip(batches, results, strict=True)
                for m, r in zip(b, rs, strict=True)
            ]

        done = await asyncio.gather(write(first, "one"), write(second, "two"))
        appended = [pair for pairs in done for pair in pairs]
        assert len(appended) == 2 * rounds * 3

        logs = {user: await second.read(user, 0, 10_000) for user in users}
        for user, entries in logs.items():
            assert [e.pos for e in entries] == list(range(1, len(entries) + 1)), user
        where = {(user, e.body.decode()): e.pos for user, entries in logs.items() for e in entries}
        assert len(where) == sum(len(m.recipients) for m, _ in appended)
        seqs: dict[str, list[int]] = {}
        for message, result in appended:
            assert not result.duplicate
            assert result.positions == tuple(
                (user, where[user, message.mid]) for user in message.recipients
            )
            seqs.setdefault(message.conversation, []).append(result.seq)
        for numbers in seqs.values():
            assert len(set(numbers)) == len(numbers)
        # In every log, the messages of one conversation come in the order of their seq.
        seq_of = {message.mid: result.seq for message, result in appended}
        conversation_of = {message.mid: message.conversation for message, _ in appended}
        for user, entries in logs.items():
            latest: dict[str, int] = {}
            for entry in entries:
                mid = entry.body.decode()
                conversation = conversation_of[mid]
                assert seq_of[mid] > latest.get(conversation, 0), (user, mid)
                latest[conversation] = seq_of[mid]
        for one, _ in appended:  # shared recipients see shared messages in one order
            for other, _ in appended:
                shared = sorted(set(one.recipients) & set(other.recipients))
                if one.mid < other.mid and len(shared) > 1:
                    orders = {where[u, one.mid] < where[u, other.mid] for u in shared}
                    assert len(orders) == 1, (one.mid, other.mid, shared)
    finally:
        await first.close()
        await second.close()


@pytest.fixture(
    params=[
        pytest.param("postgres", id="postgresql", marks=pytest.mark.integration),
        pytest.param("mariadb", id="mariadb", marks=pytest.mark.integration),
    ]
)
def locking_url(request: pytest.FixtureRequest) -> str:
    """An empty database of a dialect whose appends take locks (not SQLite: one writer)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def _hold(conn: AsyncConnection, users: list[int], conversations: list[str]) -> list[str]:
    """Take, on ``conn``, the append locks of ``users`` and ``conversations`` (a frozen node).

    Returns:
        The MySQL lock names (empty on PostgreSQL).
    """
    if conn.dialect.name == "postgresql":
        await conn.begin()
        for key in log_sql.pg_lock_keys(users, conversations):
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        return []
    database = conn.engine.url.database or ""
    names = log_sql.mysql_lock_names(database, users, conversations)
    for name in names:
        got = await conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": name})
        assert got.scalar() == 1
    return names


async def _others_locks(conn: AsyncConnection, names: list[str]) -> int:
    """How many append locks sessions other than ``conn``'s hold."""
    if conn.dialect.name == "postgresql":
        query = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
        )
        return int((await conn.execute(text(query))).scalar_one())
    held = 0
    for name in names:
        owner = (await conn.execute(text("SELECT IS_USED_LOCK(:n)"), {"n": name})).scalar()
        mine = (await conn.execute(text("SELECT CONNECTION_ID()"))).scalar()
        held += owner is not None and owner != mine
    return held


async def test_an_append_that_waits_too_long_for_a_lock_fails_and_keeps_none(
    locking_url: str,
) -> None:
    """A node frozen while holding bob's lock: an append for bob fails after lock_timeout,
    stores nothing and keeps none of its locks; appends for others go on, and bob's
    succeeds once the lock is free."""
    store = await _open(locking_url, lock_timeout=1)
    engine = create_async_engine(async_url(locking_url))
    try:
        alice, bob, carol = [await store.create_user(n, "h") for n in ("alice", "bob", "carol")]
        pair = f"u:{alice}:{bob}"
        async with engine.connect() as frozen:
            held = await _hold(frozen, [bob], [])
            with pytest.raises(DBAPIError):
                await store.append([_msg("m1", alice, (bob,), conv=pair)])
            # alice's lock was taken before bob's was waited for: it is free again.
            names = log_sql.mysql_lock_names(
                make_url(locking_url).database or "", [alice, bob], [pair]
            )
            assert await _others_locks(frozen, names) == 0
            assert await store.read(bob, 0, 10) == []
            [other] = await store.append([_msg("m2", alice, (carol,), conv=f"u:{alice}:{carol}")])
            assert other.positions == ((carol, 1),)
            await frozen.rollback()
            for name in held:
                await frozen.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})
        [done] = await store.append([_msg("m1", alice, (bob,), conv=pair)])
        assert done.positions == ((bob, 1),)
    finally:
        await engine.dispose()
        await store.close()
