"""Password hashing: salted argon2id (argon2-cffi), off the event loop.

Hashing costs tens of milliseconds of CPU by design. It runs in a pool of
its own, ``workers`` threads (0: one less than the cores, at least one),
whose threads run at a lower scheduling priority (nice +10): a storm of
logins or guesses queues for them instead of taking the cores from the event
loop that serves the logged-in users (on main, six default-pool threads
hashing at once pushed other users' chat p99 from 5 to 57 ms). The cost is
configurable; the default (``Settings.argon2_*``) follows OWASP's argon2id
minimum (19 MiB, 2 passes, 1 lane).
"""

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["PasswordHasher"]


class PasswordHasher:
    """Hash and verify passwords; never logs or compares them in plain text.

    Args:
        time_cost: argon2 passes.
        memory_kib: argon2 memory, in KiB.
        workers: Hashing threads; 0 means one less than the cores, at least one.
    """

    def __init__(self, *, time_cost: int, memory_kib: int, workers: int) -> None:
        self._argon2 = _Argon2(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        if workers <= 0:
            workers = max(1, (os.cpu_count() or 1) - 1)
        self._pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="password-hash", initializer=_lower_priority
        )
        # Verifying against this when the user does not exist keeps the timing equal.
        self._dummy = self._argon2.hash("clusterchat-no-such-user")

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._argon2.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True if ``password`` matches; ``password_hash`` None means "no such user"."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._verify, password_hash, password)

    def close(self) -> None:
        """Release the threads (hashes still queued are finished first)."""
        self._pool.shutdown(wait=False)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            self._argon2.verify(password_hash or self._dummy, password)
        except (VerificationError, InvalidHashError):
            return False
        return password_hash is not None


def _lower_priority() -> None:
    """Run this worker thread at nice +10 (Linux: priorities are per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
