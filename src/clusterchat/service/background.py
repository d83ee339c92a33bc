"""Background: tasks a component starts and must neither lose nor leave running.

asyncio keeps only a weak reference to a task: one nobody holds may vanish
mid-way, and an exception nobody retrieves is reported only when the task is
collected. A ``Background`` holds its tasks until they end, logs a failure
at once with the task's name and what makes up for it, and lets its owner
wait for them or cancel them when it stops.
"""

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["Background"]


class Background:
    def __init__(self, log: logging.Logger, remedy: str) -> None:
        """``remedy``: what makes up for a task that failed (said in the log line)."""
        self._log = log
        self._remedy = remedy
        self._tasks: set[asyncio.Task[None]] = set()

    def __bool__(self) -> bool:
        """Some task is still running."""
        return bool(self._tasks)

    def start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._ended)

    async def wait(self) -> None:
        """Wait until every task has ended (a caller's timeout leaves them running)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def cancel(self) -> None:
        """Cancel every task and wait until they have ended."""
        for task in self._tasks:
            task.cancel()
        await self.wait()

    def _ended(self, task: "asyncio.Task[None]") -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error("%s failed; %s", task.get_name(), self._remedy, exc_info=exc)
