"""LocalPresence: presence kept in memory, for a single node (or nodes in one test process).

Nodes that share one ``LocalPresenceHub`` see each other's users, as nodes
sharing one Redis do; a lone node gets a hub of its own. Entries do not expire
(there is no process to die), so only ``close()`` removes a node's users.
"""

from collections import Counter
from collections.abc import Iterable

from clusterchat.presence.base import NodeInfo, Presence

__all__ = ["LocalPresence", "LocalPresenceHub"]


class LocalPresenceHub:
    """The nodes sharing one in-process presence: node id -> (address, user -> sessions)."""

    def __init__(self) -> None:
        self.nodes: dict[str, tuple[str, Counter[int]]] = {}


class LocalPresence:
    """One node's view of an in-memory presence."""

    def __init__(self, node_id: str, address: str, hub: LocalPresenceHub | None = None) -> None:
        self._node_id = node_id
        self._hub = hub or LocalPresenceHub()
        self._users: Counter[int] = Counter()
        self._hub.nodes[node_id] = (address, self._users)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._users.clear()
        self._hub.nodes.pop(self._node_id, None)

    async def user_online(self, user_id: int) -> None:
        self._users[user_id] += 1

    async def user_offline(self, user_id: int) -> None:
        self._users[user_id] -= 1
        if self._users[user_id] <= 0:
            del self._users[user_id]

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        nodes = [users for _, users in self._hub.nodes.values()]
        return {uid for uid in user_ids if any(uid in users for users in nodes)}

    async def nodes(self) -> list[NodeInfo]:
        return [
            NodeInfo(node_id, address, frozenset(users))
            for node_id, (address, users) in self._hub.nodes.items()
        ]


_: type[Presence] = LocalPresence
