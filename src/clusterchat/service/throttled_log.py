"""ThrottledLog: log lines that clients can cause, once per kind, then counted.

Anything a client can trigger over and over (a request that hits a bug, a
connection refused at a limit) must not let that client write the node's log:
on main, one connection repeating a request that raised wrote 4.7 KB of
traceback per request (4.28 MB in 2.6 s). The first line of each kind is
logged as given (with its traceback, if any); later ones of that kind within
``interval`` seconds are only counted, and the next one after that is logged
without traceback, saying how many were left out. Kinds are bounded: past
``max_kinds`` distinct kinds, new ones share one entry.
"""

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

__all__ = ["ThrottledLog", "exception_kind"]

_OTHER = ("(other kinds)",)


@dataclass
class _Kind:
    logged_at: float
    left_out: int = 0


class ThrottledLog:
    """A logger front that logs each kind of line at most once per ``interval``.

    Args:
        logger: Where the lines go.
        interval: Seconds between two lines of one kind.
        max_kinds: Distinct kinds remembered.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float,
        max_kinds: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._max_kinds = max_kinds
        self._clock = clock
        self._kinds: dict[Hashable, _Kind] = {}

    def log(
        self,
        kind: Hashable,
        level: int,
        message: str,
        *args: Any,
        exc_info: BaseException | None = None,
    ) -> None:
        """Log ``message % args`` if no line of ``kind`` was logged within the interval."""
        now = self._clock()
        entry = self._kinds.get(kind)
        if entry is None and len(self._kinds) >= self._max_kinds:
            kind = _OTHER
            entry = self._kinds.get(kind)
        if entry is None:
            self._kinds[kind] = _Kind(now)
            self._log.log(level, message, *args, exc_info=exc_info)
            return
        if now - entry.logged_at < self._interval:
            entry.left_out += 1
            return
        if entry.left_out:
            self._log.log(
                level,
                message + " (and %d more like it in the last %.0f s)",
                *args,
                entry.left_out,
                now - entry.logged_at,
            )
        else:
            self._log.log(level, message, *args)
        entry.logged_at = now
        entry.left_out = 0


def exception_kind(where: str, exc: BaseException) -> tuple[str, str, str]:
    """A kind for ``exc`` caught ``where``: the place, its type, the line that raised it."""
    tb = exc.__traceback__
    origin = ""
    if tb is not None:
        while tb.tb_next is not None:
            tb = tb.tb_next
        origin = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
    return (where, type(exc).__qualname__, origin)
