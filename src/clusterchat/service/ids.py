"""Message ids and timestamps, made without I/O (ARCHITECTURE.md rule 9)."""

import time

__all__ = ["MessageIds", "chat_time"]


class MessageIds:
    """Cluster-unique, roughly time-ordered message ids: ``<ms hex>-<node>-<seq hex>``.

    The node id keeps nodes apart; the millisecond clock at start-up keeps a
    restarted node with the same id apart from its previous life; the sequence
    orders the ids of one node. No Redis or database round trip is needed, so
    ids keep coming while both are down.
    """

    def __init__(self, node_id: str) -> None:
        self._prefix = f"{time.time_ns() // 1_000_000:x}-{node_id}-"
        self._seq = 0

    def next(self) -> str:
        self._seq += 1
        return f"{self._prefix}{self._seq:x}"


_cache: tuple[int, str] = (0, "")


def chat_time() -> str:
    """The node clock as the classic ``YYYY-MM-DD HH:MM:SS`` (cached per second)."""
    global _cache
    now = int(time.time())
    if _cache[0] != now:
        _cache = (now, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)))
    return _cache[1]
