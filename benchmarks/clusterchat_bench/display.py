"""RichDisplay: the live progress bars and notes of a run, on standard error (rich)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["RichDisplay"]

_LOG_WIDTH = 140


class RichDisplay:
    """One progress bar per phase of each scenario, notes printed above them."""

    def __init__(self, console: Console | None = None) -> None:
        if console is None:
            console = Console(stderr=True)
            if not console.is_terminal:  # a log file: no terminal width to respect
                console = Console(stderr=True, width=_LOG_WIDTH)
        self.console = console
        self._progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    @contextmanager
    def phase(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar for ``total`` units; it fills completely when the phase succeeds."""
        task = self._progress.add_task(label, total=max(total, 1))

        def update(done: int) -> None:
            self._progress.update(task, completed=min(done, total))

        yield update
        self._progress.update(task, completed=max(total, 1))

    def note(self, text: str) -> None:
        """Print a line above the bars."""
        self._progress.console.print(text, highlight=False, markup=False)
