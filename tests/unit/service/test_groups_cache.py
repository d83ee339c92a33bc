"""GroupCache: members loaded once, dropped on change, bounded in size."""

import asyncio
from functools import partial
from pathlib import Path

from clusterchat.service.groups_cache import GroupCache
from clusterchat.store.sql import SqlStore
from tests.support.database import migrated
from tests.support.defaults import SETTINGS


async def test_the_cache_keeps_at_most_size_groups_least_recently_used_first(
    tmp_path: Path,
) -> None:
    url = await asyncio.to_thread(migrated, f"sqlite:///{tmp_path / 'chat.db'}")
    store = await asyncio.to_thread(
        partial(
            SqlStore, url, pool_size=SETTINGS.db_pool_size, lock_timeout=SETTINGS.db_lock_timeout
        )
    )
    try:
        creator = await store.create_user("creator", "h")
        groups = [await store.create_group(f"g{i}", "", creator) for i in range(5)]
        cache = GroupCache(store, ttl=SETTINGS.group_cache_ttl, size=3)
        for group in groups[:3]:
            assert await cache.members(group) == frozenset({creator})
        assert cache.cached(groups[0]) is not None  # used: now the most recent
        await cache.members(groups[3])  # over the bound: groups[1] goes
        assert cache.cached(groups[1]) is None
        assert cache.cached(groups[0]) is not None
        assert cache.cached(groups[3]) is not None
        assert await cache.members(4242) is None  # unknown groups are not cached
    finally:
        await store.close()
