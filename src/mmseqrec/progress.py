"""One progress-bar style for every long job (prepare, enrich, embed, train): rich, on stderr."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn

__all__ = ["progress_bar", "rate_column"]


def rate_column(unit: str = "it/s") -> ProgressColumn:
    """A column with the task's measured speed, e.g. ``0.31 it/s`` (``- it/s`` before the first update)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.2f} {unit}" if speed else f"- {unit}")

    return _Rate()


def progress_bar(*fields: str | ProgressColumn, enabled: bool = True, transient: bool = False,
                 size_in_bytes: bool = False, terminal_only: bool = False) -> Progress:
    """A :class:`rich.progress.Progress` on stderr: description, bar, done/total (or bytes read), ``fields``
    (strings become text columns such as ``"{task.fields[info]}"``), elapsed time and ETA.

    ``enabled=False`` gives a disabled bar with the same interface; ``terminal_only`` also disables it when
    stderr is not a terminal (readers that run inside other jobs).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(emoji=False, stderr=True)
    cols = [TextColumn("[bold]{task.description}"), BarColumn(),
            DownloadColumn() if size_in_bytes else MofNCompleteColumn()]
    cols += [TextColumn(f) if isinstance(f, str) else f for f in fields]
    cols += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*cols, console=console, transient=transient,
                    disable=not enabled or (terminal_only and not console.is_terminal))
