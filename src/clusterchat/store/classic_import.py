"""Bring a database of the original ChatServer into clusterchat's (``clusterchat import-classic``).

What is brought over (``../shared/CLASSIC-SCHEMA.md`` lists the original's quirks):

* **users** keep their ids, names and passwords. A password is hashed with
  argon2id on the way in (the original kept it in plain text); a user with no
  password gets a hash nothing matches, so that account cannot log in. A user
  with no name is called ``user<id>``. Names go through the name rules
  (``clusterchat/names.py``) as the migration of stored names does: a valid
  name is stored in its normal form with its key; a refused one, or a
  look-alike of an earlier user's, is kept as it was and reserves nothing
  (key ``!unchecked:<id>``), and is reported.
* **friendships** become mutual (the original inserted one row per request and
  showed it one way); duplicate rows collapse; rows naming a missing user, or
  a user and themself, are skipped and counted.
* **groups** keep their ids, names, descriptions, creators and members;
  duplicate membership rows collapse (a user is the creator if any row says
  so; a missing role is ``normal``); rows naming a missing group or user are
  skipped.
* **offline messages** become undelivered messages: log entries of their
  recipients, whom they reach at the next login, in the order the original
  stored them (``classic_source.py``). A group message the original stored
  once per offline member is one message with those recipients. A message
  whose JSON was truncated (500 bytes) or broken by a quote is kept: its text
  becomes the message, with what can be recovered of sender, group and time.

**Idempotent**: a user or group already there with the same id and name is
left alone, existing friendships and memberships are kept, and every
imported message carries a client id derived from its place in the source
(``cid`` is unique per sender), so a second run appends nothing.

**Refusals**: before anything is written, a user or group of the source is
compared with the target: the same id with another name, or another id
holding the same name or a look-alike of it, is a conflict; any conflict
stops the import with the list and nothing written.

Everything is written in one transaction, with the log appended by the same
code as a node's (``log_sql.append``). Stop the nodes first: their caches
would not see the new rows.
"""

import asyncio
import hashlib
import json
import re
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy import Connection, insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from clusterchat import names
from clusterchat.protocol import GroupChat, OneChat, encode
from clusterchat.store.base import NewMessage
from clusterchat.store.classic_source import ClassicData, read_classic
from clusterchat.store.log_sql import append
from clusterchat.store.schema import chat_groups, friends, group_members, users
from clusterchat.store.sql import async_url

__all__ = ["ImportConflict", "ImportReport", "import_classic"]

#: What an account without a password gets: not an argon2 hash, so nothing matches it.
NO_PASSWORD = "!no-password"
_UNCHECKED = "!unchecked:{}"
_DESCRIPTION_MAX = 256
_HASHES_AT_ONCE = 64
_APPEND_BATCH = 500
_FIELD = {
    name: re.compile(rf'"{name}"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(-?\d+))')
    for name in ("id", "name", "toid", "groupid", "time", "msg")
}


class ImportConflict(Exception):
    """The target holds users or groups that the source's would clash with."""

    def __init__(self, conflicts: list[str]) -> None:
        shown = "; ".join(conflicts[:10])
        more = f" (and {len(conflicts) - 10} more)" if len(conflicts) > 10 else ""
        super().__init__(f"{len(conflicts)} conflicts, nothing written: {shown}{more}")
        self.conflicts = conflicts


@dataclass
class ImportReport:
    """What ``import_classic`` read and did (``new_*``: rows written this run)."""

    users: int = field(default_factory=int)
    new_users: int = field(default_factory=int)
    unnamed: int = field(default_factory=int)
    without_password: int = field(default_factory=int)
    flagged: list[str] = field(default_factory=list)
    friend_rows: int = field(default_factory=int)
    friendships: int = field(default_factory=int)
    new_friendships: int = field(default_factory=int)
    skipped_friend_rows: int = field(default_factory=int)
    groups: int = field(default_factory=int)
    new_groups: int = field(default_factory=int)
    member_rows: int = field(default_factory=int)
    members: int = field(default_factory=int)
    new_members: int = field(default_factory=int)
    skipped_member_rows: int = field(default_factory=int)
    offline_rows: int = field(default_factory=int)
    messages: int = field(default_factory=int)
    new_messages: int = field(default_factory=int)
    repaired: int = field(default_factory=int)
    guessed_text: int = field(default_factory=int)

    def lines(self) -> list[str]:
        """The report in words, one fact per line."""
        return [
            f"users: {self.users} read, {self.new_users} new"
            f" ({self.unnamed} without a name, {self.without_password} without a password:"
            " they cannot log in)",
            f"friends: {self.friend_rows} rows, {self.friendships} friendships made mutual,"
            f" {self.new_friendships} new, {self.skipped_friend_rows} rows skipped"
            " (a missing user, or oneself)",
            f"groups: {self.groups} read, {self.new_groups} new;"
            f" members: {self.member_rows} rows, {self.members} members,"
            f" {self.new_members} new, {self.skipped_member_rows} rows skipped",
            f"offline messages: {self.offline_rows} rows, {self.messages} messages,"
            f" {self.new_messages} new ({self.repaired} with broken JSON kept as text)",
            f"text not in UTF-8, read as GB 18030 or latin1: {self.guessed_text} values",
            *(f"name kept as it was: {line}" for line in self.flagged),
        ]


@dataclass
class _Named:
    id: int
    name: str
    key: str


@dataclass
class _Plan:
    users: list[tuple[_Named, str | None]] = field(default_factory=list)  # new users
    groups: list[tuple[_Named, str]] = field(default_factory=list)  # new groups
    friendships: list[tuple[int, int]] = field(default_factory=list)  # both ways, new
    members: list[tuple[int, int, str]] = field(default_factory=list)  # new
    messages: list[NewMessage] = field(default_factory=list)


async def import_classic(
    source_url: str,
    target_url: str,
    hash_password: Callable[[str], Awaitable[str]],
    lock_timeout: int,
) -> ImportReport:
    """Import the original's database at ``source_url`` into the one at ``target_url``.

    The target must be at the newest schema revision (``store/migrate.py``).
    ``lock_timeout`` is the log's (``Settings.db_lock_timeout``).

    Raises:
        ImportConflict: Users or groups clash; nothing was written.
        MissingTable: The source is not the original's database.
        SQLAlchemyError, OSError: A database could not be read or written.
    """
    source = create_async_engine(async_url(source_url), poolclass=NullPool)
    try:
        async with source.connect() as conn:
            data = await conn.run_sync(read_classic)
    finally:
        await source.dispose()

    report = ImportReport()
    target = create_async_engine(async_url(target_url), poolclass=NullPool)
    try:
        async with target.connect() as conn:
            plan = await conn.run_sync(_plan, data, report)
        hashes = await _hash_all(
            [password for _, password in plan.users if password is not None], hash_password
        )
        async with target.begin() as conn:
            await conn.run_sync(_write, plan, hashes, report, lock_timeout)
    finally:
        await target.dispose()
    return report


async def _hash_all(
    passwords: list[str], hash_password: Callable[[str], Awaitable[str]]
) -> dict[str, str]:
    """Each distinct password hashed once (each hash salted: equal passwords, other hashes)."""
    hashes: dict[str, str] = {}
    pending = sorted(set(passwords))
    for start in range(0, len(pending), _HASHES_AT_ONCE):
        chunk = pending[start : start + _HASHES_AT_ONCE]
        for password, hashed in zip(
            chunk, await asyncio.gather(*(hash_password(p) for p in chunk)), strict=True
        ):
            hashes[password] = hashed
    return hashes


def _plan(conn: Connection, data: ClassicData, report: ImportReport) -> _Plan:
    """Compare the source with the target; what to write, or every conflict."""
    plan = _Plan()
    conflicts: list[str] = []
    report.guessed_text = data.decoded.guessed

    existing_users = {
        row.id: row for row in conn.execute(select(users.c.id, users.c.name, users.c.name_key))
    }
    user_ids = _plan_named(
        "user",
        [(uid, name) for uid, name, _ in data.users],
        existing_users,
        conflicts,
        report,
    )
    passwords = {uid: password for uid, _, password in data.users}
    report.users = len(data.users)
    report.unnamed = sum(1 for _, name, _ in data.users if not name)
    report.without_password = sum(1 for _, _, password in data.users if not password)
    plan.users = [
        (named, passwords[named.id] or None) for named in user_ids if named.id not in existing_users
    ]

    existing_groups = {
        row.id: row
        for row in conn.execute(
            select(chat_groups.c.id, chat_groups.c.name, chat_groups.c.name_key)
        )
    }
    group_named = _plan_named(
        "group",
        [(gid, name) for gid, name, _ in data.groups],
        existing_groups,
        conflicts,
        report,
    )
    if conflicts:
        raise ImportConflict(conflicts)
    descriptions = {gid: desc[:_DESCRIPTION_MAX] for gid, _, desc in data.groups}
    report.groups = len(data.groups)
    plan.groups = [
        (named, descriptions[named.id]) for named in group_named if named.id not in existing_groups
    ]

    known_users = {uid for uid, _, _ in data.users} | set(existing_users)
    known_groups = {gid for gid, _, _ in data.groups} | set(existing_groups)
    _plan_friends(conn, data, known_users, plan, report)
    _plan_members(conn, data, known_users, known_groups, plan, report)
    _plan_messages(data, known_users, plan, report)
    return plan


def _plan_named(
    kind: str,
    rows: list[tuple[int, str | None]],
    existing: dict[int, Any],
    conflicts: list[str],
    report: ImportReport,
) -> list[_Named]:
    """Users or groups with their stored names and keys; conflicts with the target noted."""
    by_key = {row.name_key: row.id for row in existing.values()}
    by_name = {row.name: row.id for row in existing.values()}
    taken: dict[str, int] = {}
    planned: list[_Named] = []
    for item_id, raw in rows:
        name = raw or f"{kind}{item_id}"
        key = _UNCHECKED.format(item_id)
        try:
            normal = names.normalize(name)
            candidate = names.look_alike_key(normal)
        except names.NameRefused as exc:
            report.flagged.append(f"{kind} {item_id} {name!r}: {exc}")
        else:
            if candidate in taken:
                report.flagged.append(
                    f"{kind} {item_id} {name!r} looks like {kind} {taken[candidate]}"
                )
            else:
                taken[candidate] = item_id
                name, key = normal, candidate
        planned.append(_Named(item_id, name, key))
        there = existing.get(item_id)
        if there is not None:
            if there.name != name:
                conflicts.append(f"{kind} {item_id} is {there.name!r} here, {name!r} in the source")
            continue
        holder = by_key.get(key, by_name.get(name))
        if holder is not None and holder != item_id:
            conflicts.append(f"{kind} {item_id} {name!r}: {kind} {holder} here has that name")
    return planned


def _plan_friends(
    conn: Connection, data: ClassicData, known: set[int], plan: _Plan, report: ImportReport
) -> None:
    report.friend_rows = len(data.friends)
    pairs: set[tuple[int, int]] = set()
    for a, b in data.friends:
        if a == b or a not in known or b not in known:
            report.skipped_friend_rows += 1
            continue
        pairs.add((min(a, b), max(a, b)))
    report.friendships = len(pairs)
    there = {(row.user_id, row.friend_id) for row in conn.execute(select(friends))}
    for a, b in sorted(pairs):
        added = False
        for row in ((a, b), (b, a)):
            if row not in there:
                plan.friendships.append(row)
                added = True
        report.new_friendships += added


def _plan_members(
    conn: Connection,
    data: ClassicData,
    known_users: set[int],
    known_groups: set[int],
    plan: _Plan,
    report: ImportReport,
) -> None:
    report.member_rows = len(data.members)
    roles: dict[tuple[int, int], str] = {}
    for group_id, user_id, role in data.members:
        if group_id not in known_groups or user_id not in known_users:
            report.skipped_member_rows += 1
            continue
        if role == "creator" or (group_id, user_id) not in roles:
            roles[(group_id, user_id)] = "creator" if role == "creator" else "normal"
    report.members = len(roles)
    there = {
        (row.group_id, row.user_id)
        for row in conn.execute(select(group_members.c.group_id, group_members.c.user_id))
    }
    plan.members = [(g, u, role) for (g, u), role in sorted(roles.items()) if (g, u) not in there]


def _plan_messages(data: ClassicData, known: set[int], plan: _Plan, report: ImportReport) -> None:
    """Offline rows into messages, each user's in stored order, group copies made one."""
    report.offline_rows = len(data.offline)
    queues: dict[int, deque[str]] = defaultdict(deque)  # recipient -> message keys
    found: dict[str, tuple[OneChat | GroupChat, int, str, list[int]]] = {}
    seen: dict[tuple[int, str], int] = defaultdict(int)  # (recipient, text) -> occurrences
    for recipient, raw in data.offline:
        if recipient not in known:
            continue
        push, repaired = _push(recipient, raw, known)
        report.repaired += repaired
        occurrence = seen[(recipient, raw)] = seen[(recipient, raw)] + 1
        if isinstance(push, GroupChat):
            conversation = f"g:{push.groupid}"
            place = f"{conversation}\0{raw}\0{occurrence}"
        else:
            low, high = sorted((push.id or recipient, recipient))
            conversation = f"u:{low}:{high}"
            place = f"{conversation}\0{recipient}\0{raw}\0{occurrence}"
        key = "classic-" + hashlib.sha256(place.encode()).hexdigest()[:32]
        if key not in found:
            found[key] = (push, push.id or recipient, conversation, [])
        found[key][3].append(recipient)
        queues[recipient].append(key)
    for key in _in_every_order(queues, found):
        push, sender, conversation, recipients = found[key]
        body = encode(msgspec.structs.replace(push, mid=key))
        plan.messages.append(
            NewMessage(
                mid=key,
                sender_id=sender,
                conversation=conversation,
                recipients=tuple(recipients),
                time=(push.time or "")[:19],
                body=body,
                cid=key,
            )
        )
    report.messages = len(plan.messages)


def _in_every_order(
    queues: dict[int, deque[str]], found: dict[str, tuple[Any, int, str, list[int]]]
) -> Iterable[str]:
    """Message keys in an order that keeps each recipient's order.

    A message goes out when it is first in every one of its recipients' queues;
    when none is (two recipients stored two group messages in opposite orders),
    the first queue's head goes out anyway.
    """
    remaining = {user: queue for user, queue in queues.items() if queue}
    while remaining:
        progressed = False
        for user in list(remaining):
            queue = remaining.get(user)
            while queue:
                key = queue[0]
                recipients = found[key][3]
                if any(remaining[r][0] != key for r in recipients if r != user):
                    break
                for r in recipients:
                    remaining[r].popleft()
                progressed = True
                yield key
            for r in [r for r, q in remaining.items() if not q]:
                del remaining[r]
        if not progressed:
            user = next(iter(remaining))
            key = remaining[user][0]
            for r in found[key][3]:
                if key in remaining[r]:
                    remaining[r].remove(key)
            yield key
            for r in [r for r, q in remaining.items() if not q]:
                del remaining[r]


def _push(recipient: int, raw: str, known: set[int]) -> tuple[OneChat | GroupChat, int]:
    """The push a stored request becomes, and 1 if its JSON had to be repaired."""
    try:
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("not an object")
        sender = int(value["id"])
        if sender not in known:
            raise ValueError("unknown sender")
        group = int(value["groupid"]) if int(value.get("msgid", 6)) == 10 else None
        push = _chat(
            recipient,
            group,
            msg=str(value.get("msg", "")),
            sender=sender,
            name=str(value.get("name", "")),
            time=str(value.get("time", "")),
        )
        return push, 0
    except (ValueError, TypeError, KeyError, OverflowError):
        pass
    found = {name: _field(raw, name) for name in _FIELD}
    sender_text, group_text = found["id"], found["groupid"]
    sender = int(sender_text) if sender_text and sender_text.isdigit() else recipient
    group = int(group_text) if group_text and group_text.isdigit() else None
    push = _chat(
        recipient,
        group,
        msg=raw,
        sender=sender if sender in known else recipient,
        name=found["name"] or "",
        time=found["time"] or "",
    )
    return push, 1


def _chat(
    recipient: int, group: int | None, *, msg: str, sender: int, name: str, time: str
) -> OneChat | GroupChat:
    if group is not None:
        return GroupChat(groupid=group, msg=msg, id=sender, name=name, time=time[:19])
    return OneChat(toid=recipient, msg=msg, id=sender, name=name, time=time[:19])


def _field(raw: str, name: str) -> str | None:
    match = _FIELD[name].search(raw)
    if match is None:
        return None
    return match.group(1) if match.group(1) is not None else match.group(2)


def _write(
    conn: Connection, plan: _Plan, hashes: dict[str, str], report: ImportReport, lock_timeout: int
) -> None:
    """Write the plan in the caller's transaction."""
    if plan.users:
        conn.execute(
            insert(users),
            [
                {
                    "id": named.id,
                    "name": named.name,
                    "name_key": named.key,
                    "password_hash": NO_PASSWORD if password is None else hashes[password],
                }
                for named, password in plan.users
            ],
        )
    if plan.groups:
        conn.execute(
            insert(chat_groups),
            [
                {"id": named.id, "name": named.name, "name_key": named.key, "description": desc}
                for named, desc in plan.groups
            ],
        )
    if plan.friendships:
        conn.execute(insert(friends), [{"user_id": a, "friend_id": b} for a, b in plan.friendships])
    if plan.members:
        conn.execute(
            insert(group_members),
            [{"group_id": g, "user_id": u, "role": role} for g, u, role in plan.members],
        )
    _advance_sequences(conn)
    for start in range(0, len(plan.messages), _APPEND_BATCH):
        done = append(conn, plan.messages[start : start + _APPEND_BATCH], lock_timeout)
        report.new_messages += sum(1 for item in done if not item.duplicate)
    report.new_users = len(plan.users)
    report.new_groups = len(plan.groups)
    report.new_members = len(plan.members)


def _advance_sequences(conn: Connection) -> None:
    """After rows with explicit ids, PostgreSQL's sequences must start past them."""
    if conn.dialect.name != "postgresql":
        return  # SQLite and MySQL continue after the largest id by themselves
    for table in ("users", "chat_groups"):
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" (SELECT COALESCE(MAX(id), 1) FROM {table}))"
            )
        )
