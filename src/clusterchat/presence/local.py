"""LocalPresence: presence for a single node, kept in memory."""

from collections import Counter
from collections.abc import Iterable

from clusterchat.presence.base import NodeInfo, Presence

__all__ = ["LocalPresence"]


class LocalPresence:
    """Counts, per user, the nodes (sharing this object) that hold a session."""

    def __init__(self, node_id: str = "local", address: str = "") -> None:
        self._node_id = node_id
        self._address = address
        self._users: Counter[int] = Counter()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._users.clear()

    async def user_online(self, user_id: int) -> None:
        self._users[user_id] += 1

    async def user_offline(self, user_id: int) -> None:
        self._users[user_id] -= 1
        if self._users[user_id] <= 0:
            del self._users[user_id]

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        return {uid for uid in user_ids if uid in self._users}

    async def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(self._node_id, self._address, frozenset(self._users))]


_: type[Presence] = LocalPresence
