"""Progress bars (rich) for anything that takes more than a few seconds, and the console
commands print their tables to."""

from __future__ import annotations

import os
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


WIDE = 1000  # columns of a console that writes to a file or a pipe: no table is cut


def output_console(stderr: bool = False, quiet: bool = False):
    """A rich console for what a command prints: the terminal's width at a terminal; written
    to a file, a pipe or a CI log, wide enough that every table prints whole (rich would cut
    it to 80 columns: ``ft-r…``, ``0.9…``)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(file=stream, quiet=quiet, width=WIDE if wide else None)
