"""What the chat service needs from the database, as small protocols.

Contract (tests/contract/test_store.py runs it against every dialect):

* ``create_user`` / ``create_group`` raise ``NameTaken`` for a duplicate name;
  names compare exactly (no case folding), UTF-8 intact.
* Friendship is symmetric: ``add_friendship(a, b)`` makes each the friend of
  the other and returns False if they already were.
* ``add_member`` returns False if the user already is a member.
* The undelivered store keeps messages per recipient in the order they were
  stored (``seq`` grows); ``pending`` returns them in that order and
  ``remove`` deletes exactly the given ones. A message is removed only after
  it was handed to a session, so a crash in between re-delivers (never loses);
  sessions drop repeats by message id.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Group",
    "Member",
    "NameTaken",
    "Store",
    "StoredMessage",
    "UndeliveredStore",
    "User",
]


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


@dataclass(frozen=True, slots=True)
class Member:
    user_id: int
    name: str
    role: str  # "creator" or "normal"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    user_id: int
    mid: str
    payload: bytes


class UndeliveredStore(Protocol):
    """Messages waiting for a recipient that no session could take."""

    async def store_messages(self, items: Sequence[tuple[int, str, bytes]]) -> None:
        """Store ``(user_id, mid, payload)`` items, in this order, in one transaction."""

    async def pending(
        self, user_ids: Iterable[int], limit: int, after: int = 0
    ) -> list[StoredMessage]:
        """Up to ``limit`` stored messages of these users with ``seq > after``, oldest first."""
        ...

    async def remove(self, seqs: Iterable[int]) -> None:
        """Delete the given stored messages (missing ones are ignored)."""


class Store(UndeliveredStore, Protocol):
    """Users, friends, groups and undelivered messages."""

    async def create_schema(self) -> None:
        """Create the tables if they do not exist."""

    async def close(self) -> None:
        """Release every connection."""

    async def create_user(self, name: str, password_hash: str) -> int:
        """Add a user; return its id. Raises ``NameTaken``."""
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

    async def create_group(self, name: str, description: str, creator_id: int) -> int:
        """Add a group with its creator as first member; return its id. Raises ``NameTaken``."""
        ...

    async def get_group(self, group_id: int) -> Group | None:
        """The group with this id, or None."""
        ...

    async def add_member(self, group_id: int, user_id: int, role: str = "normal") -> bool:
        """Add a member; False if already a member."""
        ...

    async def members(self, group_id: int) -> list[Member]:
        """The group's members, by user id."""
        ...

    async def groups_of(self, user_id: int) -> list[tuple[Group, list[Member]]]:
        """The user's groups, each with all its members."""
        ...
