"""Password hashing: salted argon2id (argon2-cffi), off the event loop.

Hashing costs tens of milliseconds of CPU by design, so it runs in a worker
thread and never stalls other clients. The cost is configurable; the default
follows OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane).
"""

import asyncio

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["PasswordHasher"]


class PasswordHasher:
    """Hash and verify passwords; never logs or compares them in plain text."""

    def __init__(self, *, time_cost: int = 2, memory_kib: int = 19 * 1024) -> None:
        self._argon2 = _Argon2(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        # Verifying against this when the user does not exist keeps the timing equal.
        self._dummy = self._argon2.hash("clusterchat-no-such-user")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._argon2.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True if ``password`` matches; ``password_hash`` None means "no such user"."""
        return await asyncio.to_thread(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            self._argon2.verify(password_hash or self._dummy, password)
        except (VerificationError, InvalidHashError):
            return False
        return password_hash is not None
