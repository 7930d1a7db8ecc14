"""The progress bars of ``cache-refresher refresh``: the source's pages, items, rows written.

:class:`RefreshProgress` is a context manager around a rich ``Progress`` whose
:meth:`~RefreshProgress.pages` and :meth:`~RefreshProgress.items` methods are
the callbacks a refresh takes (the fetch context's ``progress`` and the
store's ``progress``). On a terminal the bars move; elsewhere (a log, a pipe)
rich prints their final state once.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class RefreshProgress:
    """Bars for one refresh: pages fetched, items read, rows written (each shown once used)."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RefreshProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def pages(self, done: int, total: int | None) -> None:
        """The source's own progress (pages, or rows of a query)."""
        self._update("pages fetched", done, total)

    def items(self, phase: str, done: int, total: int | None) -> None:
        """The store's progress: ``fetch`` (items read and checked) or ``write`` (rows)."""
        self._update("items read" if phase == "fetch" else "rows written", done, total)

    def _update(self, description: str, done: int, total: int | None) -> None:
        task = self._tasks.get(description)
        if task is None:
            task = self._tasks[description] = self._progress.add_task(description, total=total)
        self._progress.update(task, completed=done, total=total)
