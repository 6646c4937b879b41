"""Test-only fault injection: kill the process at a named point, or note that it got there.

The kill-and-resume tests (``tests/test_kill_resume.py``) start real ``kinject`` commands and
need them to die at precise places — inside an atomic write between writing the temporary
file and renaming it, right after an optimizer step, between two forward passes.  The
library calls :func:`checkpoint` at those places; two environment variables, read once when
this module is imported, decide what happens there:

``KINJECT_KILL_AT=point[@glob]:n[,point[@glob]:n...]``
    the ``n``-th time this process reaches ``point`` (with a detail matching ``glob``, when
    given), it sends itself SIGKILL: no cleanup handler, ``finally`` block or buffered write
    runs, as when the machine loses power or the out-of-memory killer strikes.  Example:
    ``KINJECT_KILL_AT='write@*/run/metrics.json:1'`` dies inside the first atomic write of a
    run's metrics.json, after the temporary file is written and synced, before the rename.
``KINJECT_INTERRUPT_AT=point[@glob]:n[,...]``
    the same, but the process sends itself SIGINT, as Ctrl-C at a terminal does: Python
    raises KeyboardInterrupt there, and ``finally`` blocks and the CLI's handler run.
``KINJECT_TRACE=FILE``
    append one line ``point detail`` to FILE each time a point is reached (before a kill
    at it), so a test can count forward passes, optimizer steps and stored cells.

With neither variable set (every normal run), :func:`checkpoint` returns after reading one
module global: it costs nothing measurable.

The points, and where they are:

============== ============================================= ======================
point          reached                                        detail
============== ============================================= ======================
kb.spooled     a document's text is in the build's spool      the document id
embed.batch    a batch of texts is embedded                   texts in the batch
write          an atomic write: file written and fsynced,     the target path
               not yet renamed over the target
train.step     an optimizer step is done (before any          the step number (1-based)
               checkpoint of it)
score.batch    a forward pass of log-likelihood scoring       requests in the pass
cell.stored    a finished cell is stored in ``cells/``        the cell's file name
============== ============================================= ======================
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from kinject.errors import KinjectError

KILL_VARIABLE = "KINJECT_KILL_AT"
INTERRUPT_VARIABLE = "KINJECT_INTERRUPT_AT"
TRACE_VARIABLE = "KINJECT_TRACE"
POINTS = ("kb.spooled", "embed.batch", "write", "train.step", "score.batch", "cell.stored")

_ACTIVE = any(os.environ.get(v) for v in (KILL_VARIABLE, INTERRUPT_VARIABLE, TRACE_VARIABLE))


@dataclass
class _Kill:
    point: str
    pattern: str | None  # fnmatch glob on the detail; None: any detail
    n: int  # die on the n-th matching arrival
    seen: int = 0
    sends: int = signal.SIGKILL  # SIGINT: interrupted, as by Ctrl-C


_kills: list[_Kill] | None = None  # parsed on first use, so a bad value is a clear error


def checkpoint(point: str, detail: object = "") -> None:
    """A named place in the library where a test may kill the process or trace its passage."""
    if not _ACTIVE:
        return
    _arrive(point, str(detail))


def _arrive(point: str, detail: str) -> None:
    from fnmatch import fnmatchcase

    global _kills
    if _kills is None:
        _kills = parse_kill_spec(os.environ.get(KILL_VARIABLE, ""))
        _kills += parse_kill_spec(os.environ.get(INTERRUPT_VARIABLE, ""), INTERRUPT_VARIABLE)
    trace = os.environ.get(TRACE_VARIABLE)
    if trace:
        _append_line(trace, f"{point} {detail}".rstrip() + "\n")
    for kill in _kills:
        if kill.point != point:
            continue
        if kill.pattern is not None and not fnmatchcase(detail, kill.pattern):
            continue
        kill.seen += 1
        if kill.seen == kill.n:
            os.kill(os.getpid(), kill.sends)


def _append_line(path: str, line: str) -> None:
    """One write with O_APPEND: whole lines, even from several processes at once."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def parse_kill_spec(spec: str, variable: str = KILL_VARIABLE) -> list[_Kill]:
    """``point[@glob]:n`` items, comma-separated; a bad item is a KinjectError naming it.
    Of ``KINJECT_INTERRUPT_AT`` (``variable``), each sends SIGINT instead of SIGKILL."""
    sent = signal.SIGINT if variable == INTERRUPT_VARIABLE else signal.SIGKILL
    kills = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        target, sep, count = item.rpartition(":")
        point, at, pattern = target.partition("@")
        if not sep or not count.isdigit() or int(count) < 1 or point not in POINTS:
            raise KinjectError(
                f"{variable}: '{item}' is not point[@glob]:n with n >= 1 and point one "
                f"of {', '.join(POINTS)}"
            )
        kills.append(_Kill(point, pattern if at else None, int(count), sends=sent))
    return kills
