"""Presence: who is online, and on which node.

Contract (tests/contract/test_presence.py):

* ``user_online`` / ``user_offline`` are called by a node when a user's first
  session on it opens and its last one closes.
* An entry is held by its node: it **expires unless the node keeps
  heartbeating** (``heartbeat_interval``; gone within ``expiry`` after the
  node dies), so a crashed node takes its users offline by itself.
* ``online(ids)`` returns the subset of ``ids`` online on any live node.
* ``close()`` removes this node's entries only, never another node's.
* Presence is advisory (friend and member ``state``); delivery never depends
  on it, so an outage of the backend only makes states read "offline".
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["NodeInfo", "Presence"]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live node as presence sees it."""

    node_id: str
    address: str
    users: frozenset[int]


class Presence(Protocol):
    """Online state of users across the cluster."""

    async def start(self) -> None:
        """Register this node and begin heartbeating."""

    async def close(self) -> None:
        """Stop heartbeating and remove this node's users (only this node's)."""

    async def user_online(self, user_id: int) -> None:
        """This node now holds a session of ``user_id``."""

    async def user_offline(self, user_id: int) -> None:
        """This node no longer holds any session of ``user_id``."""

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        """The users among ``user_ids`` that are online on some live node."""
        ...

    async def nodes(self) -> list[NodeInfo]:
        """Every live node and its online users."""
        ...
