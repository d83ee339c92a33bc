"""KnownUsers: which user ids exist, cached, so chat needs no query per message.

Users are never deleted, so a positive answer stays true; the cache is an LRU
bounded in size. A miss costs one query.
"""

from collections import OrderedDict

from clusterchat.store.base import Store

__all__ = ["KnownUsers"]


class KnownUsers:
    def __init__(self, store: Store, *, size: int) -> None:
        self._store = store
        self._size = size
        self._names: OrderedDict[int, str] = OrderedDict()

    def name(self, user_id: int) -> str | None:
        """The cached name of ``user_id``, or None if not cached (which proves nothing)."""
        name = self._names.get(user_id)
        if name is not None:
            self._names.move_to_end(user_id)
        return name

    def remember(self, user_id: int, name: str) -> None:
        self._names[user_id] = name
        self._names.move_to_end(user_id)
        if len(self._names) > self._size:
            self._names.popitem(last=False)

    async def exists(self, user_id: int) -> bool:
        if self.name(user_id) is not None:
            return True
        user = await self._store.get_user(user_id)
        if user is None:
            return False
        self.remember(user.id, user.name)
        return True
