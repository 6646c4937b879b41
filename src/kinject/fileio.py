"""Atomic writes and line-numbered JSONL reading: every result file goes through here."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from kinject import faults
from kinject.errors import DataError, KinjectError


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    A crash or exception inside the block leaves the previous ``path`` (or nothing) behind,
    never a half-written file.  The file is fsynced before the rename and the folder after
    it, so after a power loss ``path`` is the old file or the whole new one.

    The temporary file is ``.{name}.{pid}-{random}.tmp``: a process killed mid-write (SIGKILL
    runs no cleanup) leaves one behind, and the next write of the same ``path`` removes it
    once its writer's process is gone (a live writer's is left alone).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    prefix = f".{path.name}.{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        faults.checkpoint("write", path)  # tests: killed here, the temporary file remains
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """Make the names in ``folder`` (a rename into it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_OWNED = re.compile(r"(\d+)-[A-Za-z0-9_]+")  # what follows the prefix: "{pid}-{random}"


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files of atomic writes of ``path`` whose writing process is gone
    (killed mid-write); returns them."""
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        owner = _OWNED.fullmatch(name[len(prefix) : -len(".tmp")])
        if owner is not None and not process_alive(int(owner.group(1))):
            (path.parent / name).unlink(missing_ok=True)
            removed.append(path.parent / name)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie, killed but not yet reaped by
    its parent, counts as gone)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS), or it has just ended
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing); others wait."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def staging_dir(parent: str | Path, prefix: str) -> Path:
    """A new empty folder in ``parent`` to build into, with ordinary permissions (not 0700):
    ``{prefix}{pid}-{random}``.  Folders of the same ``prefix`` left by a process that is
    gone (killed while building) are removed first."""
    import shutil

    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(parent):
        owner = _OWNED.fullmatch(name[len(prefix) :]) if name.startswith(prefix) else None
        if owner is not None and not process_alive(int(owner.group(1))):
            shutil.rmtree(parent / name, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    os.chmod(folder, 0o777 & ~_umask())
    return folder


def replace_dir(staging: Path, target: Path) -> None:
    """Put the finished folder ``staging`` at ``target``, replacing what was there.

    The old folder is renamed aside (``.{name}.old``) and removed after; one left by a
    process killed in between is removed on the next replacement."""
    import shutil

    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)
    fsync_dir(target.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_of(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a file; a missing file, a folder or an unreadable file is a DataError."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, None, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, None, None, "is a folder, not a file") from None
    except OSError as error:
        raise DataError(path, None, None, f"cannot read file ({error.strerror})") from None


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line, failing on invalid UTF-8 with the line named."""
    path = Path(path)
    raw = read_bytes(path)
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(path, number, None, f"invalid UTF-8 at byte {error.start}") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file (a UTF-8 byte
    order mark before the first line is allowed)."""
    for number, line in read_lines(path):
        if number == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        obj = parse_json(path, number, line)
        if not isinstance(obj, dict):
            raise DataError(path, number, None, "expected a JSON object")
        yield number, obj


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNWRITABLE = re.compile("[\x00\ud800-\udfff]")


def parse_json(path: str | Path, line: int | None, text: str) -> Any:
    """``json.loads(text)``, with every way hostile text can fail it as a DataError naming
    the file and the line (``line`` None: ``text`` is the whole file, and the error's own
    line and column are named): not JSON, nested too deeply for the parser, a number too
    long to convert, or a string holding a lone surrogate escape (``"\\ud800"``), which is
    valid JSON but not Unicode text that UTF-8 can hold."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        if line is None:
            line, detail = error.lineno, f"{error.msg}, column {error.colno}"
        else:
            detail = error.msg
        raise DataError(path, line, None, f"not valid JSON ({detail})") from None
    except RecursionError:
        raise DataError(path, line, None, "JSON nested too deeply") from None
    except ValueError:  # the only other: an integer longer than Python converts
        digits = sys.get_int_max_str_digits()
        raise DataError(path, line, None, f"a JSON number of more than {digits} digits") from None
    if _SURROGATE_ESCAPE.search(text):  # rare: only then walk the object
        found = _find_in_strings(obj, _SURROGATE)
        if found is not None:
            where, char = found
            message = f"lone surrogate \\u{ord(char):04x} in a string (not valid Unicode)"
            raise DataError(path, line, where or None, message)
    return obj


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """The data of a YAML file (``yaml.safe_load``; None when empty), or a one-line
    KinjectError naming the file and, where it has them, the line, column and key: the file
    missing or unreadable, invalid UTF-8, invalid YAML, a key written twice in one mapping
    (YAML would keep the last silently), or a string holding a NUL character or a lone
    surrogate escape (no path, no UTF-8 file can hold one)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise KinjectError(f"{path}: {what} not found")
    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(path, line, None, f"invalid UTF-8 at byte {error.start}") from None
    UniqueKeysSafeLoader = _yaml_loader()  # a yaml.SafeLoader subclass
    try:
        data = yaml.load(text, Loader=UniqueKeysSafeLoader)
    except _DuplicateKey as error:
        message = f"written twice in one mapping (first on line {error.first})"
        raise DataError(path, error.line, str(error.key), message) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = " ".join((error.problem or error.context or "").split())
        line = mark.line + 1 if mark is not None else None
        column = f", column {mark.column + 1}" if mark is not None else ""
        raise DataError(path, line, None, f"not valid YAML ({problem}{column})") from None
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise KinjectError(f"{path}: not valid YAML ({reason})") from None
    found = _find_in_strings(data, _UNWRITABLE)  # no path, no UTF-8 file can hold these
    if found is not None:
        where, char = found
        if char == "\x00":
            message = "a NUL character in a string (no path can hold one)"
        else:
            message = f"lone surrogate \\u{ord(char):04x} in a string (not valid Unicode)"
        raise DataError(path, None, where or None, message)
    return data


class _DuplicateKey(Exception):
    """A key written twice in one YAML mapping (raised while loading, reported as DataError)."""

    def __init__(self, key: Any, line: int, first: int):
        super().__init__(key, line, first)
        self.key, self.line, self.first = key, line, first


@lru_cache(maxsize=1)
def _yaml_loader() -> type:
    """``yaml.SafeLoader`` that refuses a key written twice in the same mapping (a ``<<``
    merge may still be overridden, as YAML intends)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, line, seen[key])
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
            return super().construct_mapping(node, deep=deep)

    return Loader


def _find_in_strings(data: Any, pattern: re.Pattern) -> tuple[str, str] | None:
    """``(key path, match)`` for the first string, or mapping key, in ``data`` where
    ``pattern`` matches; the key path as ``a.b[0]`` ("" for ``data`` itself, and the
    mapping's own path for a key).  A mapping or list met again (a YAML alias) is not
    walked again, so an alias bomb costs nothing."""
    stack: list[tuple[str, Any]] = [("", data)]
    walked: set[int] = set()
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            found = pattern.search(value)
            if found:
                return where, found.group()
            continue
        if not isinstance(value, (dict, list)) or id(value) in walked:
            continue
        walked.add(id(value))
        if isinstance(value, dict):
            for key, item in reversed(value.items()):
                found = pattern.search(key) if isinstance(key, str) else None
                if found:
                    return where, found.group()
                stack.append((f"{where}.{key}" if where else str(key), item))
        else:
            stack.extend((f"{where}[{i}]", value[i]) for i in reversed(range(len(value))))
    return None
