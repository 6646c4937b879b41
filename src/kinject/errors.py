"""Errors a user can act on.  The CLI prints them as one line; anything else is a bug."""

from __future__ import annotations

from pathlib import Path


class KinjectError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    def __str__(self) -> str:
        # One line, whatever the input put into the message (an id with a line break in it).
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")


class DataError(KinjectError):
    """A bad record in an input file, located by file, line and field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str):
        self.path = Path(path)
        self.line = line
        self.field = field
        where = str(self.path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
