"""GroupCache: group members per node, so a group message costs no query per member.

An entry is loaded once from the store and dropped when membership changes:
at once on this node, and on the others through a GROUP_CHANGED envelope on
the bus. Because an invalidation can be lost while the bus is down, the whole
cache is also cleared when the bus comes back, and entries expire after
``ttl`` seconds as a last resort. At most ``size`` groups are kept (the least
recently used goes first), so a client that writes to many groups costs the
node a bounded amount of memory.
"""

import time
from collections import OrderedDict

from clusterchat.store.base import Store

__all__ = ["GroupCache"]


class GroupCache:
    def __init__(self, store: Store, *, ttl: float, size: int) -> None:
        self._store = store
        self._ttl = ttl
        self._size = size
        self._members: OrderedDict[int, tuple[float, frozenset[int]]] = OrderedDict()

    def cached(self, group_id: int) -> frozenset[int] | None:
        """The member ids if cached and fresh, else None."""
        entry = self._members.get(group_id)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._members[group_id]
            return None
        self._members.move_to_end(group_id)
        return entry[1]

    async def members(self, group_id: int) -> frozenset[int] | None:
        """The member ids of a group, or None if the group does not exist."""
        cached = self.cached(group_id)
        if cached is not None:
            return cached
        if await self._store.get_group(group_id) is None:
            return None
        members = frozenset(m.user_id for m in await self._store.members(group_id))
        self._members[group_id] = (time.monotonic() + self._ttl, members)
        self._members.move_to_end(group_id)
        if len(self._members) > self._size:
            self._members.popitem(last=False)
        return members

    def invalidate(self, group_id: int) -> None:
        self._members.pop(group_id, None)

    def clear(self) -> None:
        self._members.clear()
