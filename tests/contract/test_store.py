"""The Store contract (src/clusterchat/store/base.py), run against every SQL dialect.

``STORES`` lists the databases: SQLite in ``tmp_path`` for now; PostgreSQL and
MariaDB join by adding a ``pytest.param`` whose factory returns their URL.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from clusterchat.store.base import Group, Member, NameTaken, Store, User
from clusterchat.store.sql import SqlStore

#: Each parameter turns the test's tmp_path into a database URL.
STORES = [
    pytest.param(lambda tmp: f"sqlite:///{tmp}/store.db", id="sqlite"),
]

UrlFactory = Callable[[Path], str]


async def _open(url: str) -> SqlStore:
    # The engine resolves the file path when built: once, off the event loop.
    store = await asyncio.to_thread(SqlStore, url)
    await store.create_schema()
    return store


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database of one dialect."""
    factory: UrlFactory = request.param
    return factory(tmp_path)


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


# --- undelivered messages ----------------------------------------------------------------


async def test_pending_returns_stored_messages_in_order(store: Store) -> None:
    """Messages come back per recipient in the order stored, seq growing, with their mids."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    await store.store_messages([(alice, "m1", b"one"), (bob, "m2", b"two")])
    await store.store_messages([(alice, "m3", b"three")])
    mine = await store.pending([alice], 10)
    assert [(m.user_id, m.mid, m.payload) for m in mine] == [
        (alice, "m1", b"one"),
        (alice, "m3", b"three"),
    ]
    assert mine[0].seq < mine[1].seq
    both = await store.pending([alice, bob], 10)
    assert [m.mid for m in both] == ["m1", "m2", "m3"]
    assert await store.pending([], 10) == []


async def test_pending_honours_limit_and_after(store: Store) -> None:
    """limit caps the batch and ``after`` resumes past a seq, so batches page through all."""
    alice = await store.create_user("alice", "h")
    await store.store_messages([(alice, f"m{i}", str(i).encode()) for i in range(7)])
    pages: list[list[str]] = []
    after = 0
    while batch := await store.pending([alice], 3, after):
        pages.append([m.mid for m in batch])
        after = batch[-1].seq
    assert pages == [["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6"]]


async def test_remove_deletes_exactly_the_given_messages(store: Store) -> None:
    """remove deletes the given seqs only, ignores unknown ones and keeps the order of the rest."""
    alice = await store.create_user("alice", "h")
    bob = await store.create_user("bob", "h")
    await store.store_messages([(alice, f"a{i}", b"x") for i in range(5)] + [(bob, "b0", b"y")])
    stored = await store.pending([alice], 10)
    await store.remove([stored[1].seq, stored[3].seq, 999_999])
    assert [m.mid for m in await store.pending([alice], 10)] == ["a0", "a2", "a4"]
    assert [m.mid for m in await store.pending([bob], 10)] == ["b0"]
    await store.remove([])
    await store.remove(m.seq for m in stored)  # any iterable; already removed ones ignored
    assert await store.pending([alice], 10) == []


async def test_messages_stored_after_a_remove_come_later(store: Store) -> None:
    """seq keeps growing after removals, so new messages never sort before older ones."""
    alice = await store.create_user("alice", "h")
    await store.store_messages([(alice, "old", b"1")])
    [old] = await store.pending([alice], 10)
    await store.store_messages([(alice, "newer", b"2")])
    await store.remove([old.seq])
    await store.store_messages([(alice, "newest", b"3")])
    rest = await store.pending([alice], 10)
    assert [m.mid for m in rest] == ["newer", "newest"]
    assert all(m.seq > old.seq for m in rest)
    assert [m.mid for m in await store.pending([alice], 10, after=rest[0].seq)] == ["newest"]


async def test_payload_bytes_round_trip(store: Store) -> None:
    """Payloads come back byte for byte: UTF-8 text, NUL, and bytes that are not UTF-8."""
    alice = await store.create_user("alice", "h")
    payloads = [
        '{"msg":"你好\uff0c世界 🙂"}'.encode(),
        b"\x00\x01\xff\xfe not utf-8",
        b"",
        bytes(range(256)) * 64,
    ]
    await store.store_messages([(alice, f"m{i}", p) for i, p in enumerate(payloads)])
    assert [m.payload for m in await store.pending([alice], 10)] == payloads


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
                    store.store_messages([(users[i % 4], f"{tag}-{i}", tag.encode())])
                    for i in range(per_store)
                ),
                *(store.create_user(f"{tag}-new-{i}", "h") for i in range(20)),
                *(store.add_friendship(users[0], users[1 + i % 3]) for i in range(6)),
            )

        await asyncio.gather(write(first, "one"), write(second, "two"))

        stored = await first.pending(users, 10_000)
        mids = [m.mid for m in stored]
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
