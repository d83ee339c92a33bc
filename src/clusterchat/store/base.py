"""What the chat service needs from the database, as small protocols.

Contract (tests/contract/test_store.py runs it against every dialect):

* ``create_user`` / ``create_group`` raise ``NameTaken`` for a duplicate name;
  names compare exactly (no case folding), UTF-8 intact.
* Friendship is symmetric: ``add_friendship(a, b)`` makes each the friend of
  the other and returns False if they already were. ``request_friendship(a,
  b)`` is the consented way: it stores a's request, or, when b had asked a,
  makes them friends (``Friendship``).
* ``add_member`` returns False if the user already is a member.
* The message log (``MessageLog``): ``append`` commits a batch in one
  transaction, or nothing. Each recipient's entries get consecutive positions
  (``pos`` 1, 2, 3... per user, no holes, in batch order); each message gets
  a ``seq`` larger than every ``seq`` of its conversation before it (the
  log's count of messages: increasing, not consecutive). Positions are allocated so that two
  messages that share recipients are in the same order in every recipient's
  log. A message whose ``(sender_id, cid)`` exists already is not stored
  again: its result is the original one, marked ``duplicate``.
* ``read`` returns a user's entries after a position, in order; ``heads``
  the last position of each user's log. Cursors only move forward
  (``save_cursors`` keeps the larger of the stored and the given position).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import msgspec

__all__ = [
    "Appended",
    "Friendship",
    "Group",
    "LogEntry",
    "Member",
    "MessageLog",
    "NameTaken",
    "NewMessage",
    "Store",
    "User",
]


class Friendship(Enum):
    """What ``request_friendship(a, b)`` did."""

    REQUESTED = "requested"  # a's request is stored now and waits for b
    PENDING = "pending"  # a had asked b before: the request still waits
    ACCEPTED = "accepted"  # b had asked a: now they are friends
    ALREADY = "already"  # they were friends already


class NameTaken(Exception):
    """A user or group with that name exists already."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    password_hash: str = ""


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    name: str
    description: str
    invite_only: bool = False


@dataclass(frozen=True, slots=True)
class Member:
    user_id: int
    name: str
    role: str  # "creator" or "normal"


# The log's own records are msgspec structs, not frozen dataclasses: one is
# made per message on the hot path (in the node and in the
# SQLite log writer), and a frozen dataclass costs 2.3 µs to make where a
# struct costs 0.13 µs (docs/performance.md). They hold no references that
# could form a cycle, so the garbage collector does not track them.


class NewMessage(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A message to append to the log (on the log writer's wire: an array).

    Attributes:
        mid: Its server message id (cluster-unique).
        sender_id: Who sent it.
        conversation: The key of its pair or group (``seq`` increases per key).
        recipients: The users whose logs get an entry.
        time: Server time, ``YYYY-MM-DD HH:MM:SS``.
        body: The push as clients receive it.
        cid: The sender's own message id, or None.
    """

    mid: str
    sender_id: int
    conversation: str
    recipients: tuple[int, ...]
    time: str
    body: bytes
    cid: str | None = None


class Appended(msgspec.Struct, frozen=True, gc=False):
    """The outcome of appending one ``NewMessage``.

    Attributes:
        mid, seq, time, body: The message as stored (for a duplicate: the
            original's).
        positions: ``(user_id, pos)`` of each new log entry (empty for a duplicate).
        duplicate: An earlier message had the same ``(sender_id, cid)``.
    """

    mid: str
    seq: int
    time: str
    body: bytes
    positions: tuple[tuple[int, int], ...]
    duplicate: bool = False


class LogEntry(msgspec.Struct, frozen=True, gc=False):
    pos: int
    body: bytes


class MessageLog(Protocol):
    """Every accepted message, and each user's log of the messages for them."""

    async def append(self, batch: Sequence[NewMessage]) -> list[Appended]:
        """Append a batch in one transaction; one result per message, in order."""
        ...

    async def read(self, user_id: int, after: int, limit: int) -> list[LogEntry]:
        """Up to ``limit`` entries of the user's log with ``pos > after``, in order."""
        ...

    async def heads(self, user_ids: Iterable[int]) -> dict[int, int]:
        """The last position of each user's log (0 when empty; unknown users left out)."""
        ...

    async def load_cursors(self, user_id: int) -> dict[str, int]:
        """device -> position, for every device of the user that has a cursor."""
        ...

    async def save_cursors(self, items: Sequence[tuple[int, str, int]]) -> None:
        """Move ``(user_id, device, pos)`` cursors forward (never back) in one transaction."""


class Store(MessageLog, Protocol):
    """Users, friends, groups and the message log."""

    async def close(self) -> None:
        """Release every connection."""

    async def create_user(
        self, name: str, password_hash: str, *, name_key: str | None = None
    ) -> int:
        """Add a user; return its id.

        ``name_key`` must be unique as well as ``name`` (the service passes the
        name's look-alike key; None: the name itself). Raises ``NameTaken``.
        """
        ...

    async def get_user(self, user_id: int) -> User | None:
        """The user with this id, or None."""
        ...

    async def add_friendship(self, user_id: int, friend_id: int) -> bool:
        """Make two existing users friends of each other; False if they already were."""
        ...

    async def friends_of(self, user_id: int) -> list[User]:
        """The user's friends (without password hashes), by id."""
        ...

    async def request_friendship(self, from_id: int, to_id: int) -> Friendship:
        """``from_id`` asks ``to_id`` to be friends (both exist); one transaction."""
        ...

    async def friend_requests_to(self, user_id: int) -> list[User]:
        """Who asked ``user_id`` to be friends and waits, by id."""
        ...

    async def create_group(
        self,
        name: str,
        description: str,
        creator_id: int,
        *,
        name_key: str | None = None,
        invite_only: bool = False,
    ) -> int:
        """Add a group with its creator as first member; return its id.

        ``name_key`` as for ``create_user``. Raises ``NameTaken``.
        """
        ...

    async def get_group(self, group_id: int) -> Group | None:
        """The group with this id, or None."""
        ...

    async def add_member(self, group_id: int, user_id: int, role: str = "normal") -> bool:
        """Add a member; False if already a member."""
        ...

    async def invite(self, group_id: int, user_id: int) -> None:
        """Let ``user_id`` join the (invite-only) group; inviting twice is one invitation."""
        ...

    async def invited(self, group_id: int, user_id: int) -> bool:
        """Whether ``user_id`` has an invitation to the group."""
        ...

    async def members(self, group_id: int) -> list[Member]:
        """The group's members, by user id."""
        ...

    async def groups_of(self, user_id: int) -> list[tuple[Group, list[Member]]]:
        """The user's groups, each with all its members."""
        ...

    async def memberships(self, user_ids: Iterable[int]) -> dict[int, list[int]]:
        """The ids of each user's groups, ascending (users in no group left out)."""
        ...
