"""Progress bars (rich) for anything that takes more than a few seconds."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _Bar:
    def __init__(self, progress, task):
        self._progress = progress
        self._task = task

    def describe(self, description: str) -> None:
        """Change the text before the bar (what is being worked on now)."""
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self._progress is None:
            return
        if info is None:
            self._progress.advance(self._task, n)
        else:
            self._progress.update(self._task, advance=n, info=info)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[_Bar]:
    """A rich progress bar on stderr; a silent stand-in when disabled."""
    if not enabled:
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total, info="")
        yield _Bar(progress, task)
