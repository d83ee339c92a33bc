"""Backoff: exponential back-off for attempts that cost the node (logins, registrations).

Each key (an account, an address) has a streak of counted attempts. The
first ``free`` of a streak pass; after that each one makes the key wait
``base``, then twice as long, and so on up to ``cap`` seconds. A streak ends
(the key is forgotten) after ``forget`` seconds without a counted attempt,
or when the caller says the key succeeded (a right password). At most
``max_keys`` keys are remembered; the one that was quiet longest goes first,
so memory stays bounded whatever an attacker sends (a forgotten key only
gets its free attempts back).
"""

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass
class _Streak:
    attempts: int
    last: float
    blocked_until: float


class Backoff:
    """Attempts per key, and how long a key must wait before the next one.

    Args:
        free: Attempts of a streak that pass without waiting.
        base: The first wait, in seconds.
        cap: The longest wait.
        forget: Seconds without attempts that end a streak.
        max_keys: Keys remembered at once.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        *,
        free: int,
        base: float,
        cap: float,
        forget: float,
        max_keys: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = free
        self._base = base
        self._cap = cap
        self._forget = forget
        self._max_keys = max_keys
        self._clock = clock
        self._streaks: OrderedDict[Hashable, _Streak] = OrderedDict()

    def retry_after(self, key: Hashable) -> int:
        """Whole seconds ``key`` must still wait (0: it may try now)."""
        streak = self._live(key)
        if streak is None:
            return 0
        return max(0, math.ceil(streak.blocked_until - self._clock()))

    def count(self, key: Hashable) -> None:
        """``key`` made an attempt that counts (a wrong password, a registration)."""
        now = self._clock()
        streak = self._live(key)
        if streak is None:
            streak = self._streaks[key] = _Streak(0, now, now)
            while len(self._streaks) > self._max_keys:
                self._streaks.popitem(last=False)
        streak.attempts += 1
        streak.last = now
        self._streaks.move_to_end(key)
        beyond = streak.attempts - self._free
        if beyond > 0:
            wait = min(self._cap, self._base * 2 ** min(beyond - 1, 32))
            streak.blocked_until = max(streak.blocked_until, now + wait)

    def clear(self, key: Hashable) -> None:
        """``key`` succeeded: its streak ends."""
        self._streaks.pop(key, None)

    def _live(self, key: Hashable) -> _Streak | None:
        streak = self._streaks.get(key)
        if streak is not None and self._clock() - streak.last > max(
            self._forget, streak.blocked_until - streak.last
        ):
            del self._streaks[key]
            return None
        return streak
